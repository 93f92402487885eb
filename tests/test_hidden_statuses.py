"""HIDDEN_STATUSES (SPEC §1): the setting, the rule, and what presence makes of it.

The presence tests run the whole site on a fake clock (tests/helpers/in_memory.py);
the rules themselves are :class:`Devices`', shared by every in-process store.
The same behaviour on Redis, across instances, is in tests/test_hidden_e2e.py.
"""

from __future__ import annotations

import json

import pytest
from twisted.python.usage import UsageError

from heartbeat.core.hidden_statuses import Hiding, parse_hidden_statuses
from heartbeat.core.presence import Devices, Ping, Presence
from heartbeat.daemon.config import load_settings
from heartbeat.daemon.logs import masked
from heartbeat.daemon.tap import Options
from tests.helpers.in_memory import PRESENCE_TIMEOUT as T
from tests.helpers.in_memory import (
    MemoryServer,
    events,
    ids,
    leave,
    ping,
    response,
    samples,
    seen,
    watch,
)


def test_unset_hides_nothing():
    settings = load_settings({}, {}, {})
    assert settings.hidden_statuses == ()
    hiding = Hiding.of(settings.hidden_statuses)
    assert hiding.statuses == frozenset()
    assert not any(hiding.hides(status) for status in ("0", "1", "2", "3", ""))
    assert masked(settings)["HIDDEN_STATUSES"] == "unset"


def test_beeps_invisible_hides_and_nothing_else_does():
    hiding = Hiding.of(load_settings({}, {"HIDDEN_STATUSES": "3"}, {}).hidden_statuses)
    assert hiding
    assert hiding.hides("3")
    assert not any(hiding.hides(status) for status in ("0", "1", "2", "33", " 3", "3 "))


def test_a_list_is_trimmed_and_counted_once_in_order():
    assert parse_hidden_statuses(" 3, invisible ,,3, ") == ("3", "invisible")
    assert parse_hidden_statuses("") == ()
    assert parse_hidden_statuses("ünsichtbar") == ("ünsichtbar",)


def test_option_beats_environment():
    settings = load_settings({"hidden-statuses": "4"}, {"HIDDEN_STATUSES": "3"}, {})
    assert settings.hidden_statuses == ("4",)
    assert any(o[0] == "hidden-statuses" for o in Options.optParameters)


@pytest.mark.parametrize("bad", ["3,\x01", "x" * 65, "3,a\x85b"])
def test_a_status_no_ping_could_send_is_a_bad_setting(bad):
    with pytest.raises(UsageError, match="^bad setting HIDDEN_STATUSES=") as raised:
        load_settings({}, {"HIDDEN_STATUSES": bad}, {})
    assert "\n" not in str(raised.value)


def test_a_status_of_the_longest_length_is_fine():
    assert parse_hidden_statuses("x" * 64) == ("x" * 64,)


# Presence with HIDDEN_STATUSES=3 (Beep's Invisible).

HIDE = Hiding.of(("3",))


def hiding_server(**env: str) -> MemoryServer:
    return MemoryServer(HIDDEN_STATUSES="3", **env)


def status_of(server: MemoryServer, userid: str = "alice") -> object:
    return json.loads(response(server.send("GET", f"/status?user={userid}").take())[1])[userid]


def test_going_hidden_is_one_offline_event_with_the_last_visible_ping():
    server = hiding_server()
    stream = watch(server)
    t0 = int(server.clock.seconds())
    ping(server, "1")
    server.clock.advance(5)
    ping(server, "3")
    got = events(stream.response())
    assert got[-1] == {"userid": "alice", "time": t0, "status": "1", "online": False}
    for _ in range(3):  # still hidden: nothing, however often it pings
        server.clock.advance(T / 2)
        ping(server, "3")
    assert seen(stream) == [("1", True), ("1", False)]
    assert status_of(server) == {"time": t0, "status": "1", "online": False, "devices": {
        "phone": {"time": t0, "status": "1", "online": False}}}


def test_a_visible_ping_after_hiding_is_an_ordinary_online_event():
    server = hiding_server()
    stream = watch(server)
    ping(server, "0")
    ping(server, "3")
    server.clock.advance(10)
    ping(server, "2")
    assert events(stream.response())[-1] == {
        "userid": "alice", "time": int(server.clock.seconds()), "status": "2", "online": True}
    assert seen(stream) == [("0", True), ("0", False), ("2", True)]


def test_hiding_when_already_offline_sends_nothing():
    server = hiding_server()
    stream = watch(server)
    ping(server, "0")
    server.clock.advance(T)  # timed out
    ping(server, "3")
    assert seen(stream) == [("0", True), ("0", False)]
    assert status_of(server)["online"] is False


def test_a_user_who_only_ever_pinged_hidden_is_never_seen():
    server = hiding_server()
    stream = watch(server)
    device = watch(server, "/subscribe/alice/client/phone")
    ping(server, "3")
    assert status_of(server) is None
    later = watch(server)
    server.clock.advance(2 * T)
    for conn in (stream, device, later):
        assert events(conn.response()) == []
    assert server.store.offline_transitions == 0


def test_a_hidden_device_keeps_its_deadline_and_times_out_silently():
    server = hiding_server()
    stream = watch(server)
    ping(server, "0")
    server.clock.advance(T - 1)
    ping(server, "3")  # re-arms: the device is still connected, only hidden
    assert len(server.store._deadlines) == 1
    server.clock.advance(T - 1)
    assert len(server.store._deadlines) == 1
    server.clock.advance(1)
    assert len(server.store._deadlines) == 0
    assert seen(stream) == [("0", True), ("0", False)]
    assert server.store.offline_transitions == 1


def test_leaving_while_hidden_sends_nothing():
    server = hiding_server()
    stream = watch(server)
    ping(server, "0")
    ping(server, "3")
    assert leave(server) == 200
    assert seen(stream) == [("0", True), ("0", False)]


def test_one_device_hidden_one_visible_the_user_is_online_with_the_visible_status():
    server = hiding_server()
    user = watch(server)
    web = watch(server, "/subscribe/alice/client/web")
    t0 = int(server.clock.seconds())
    ping(server, "1", "web")
    server.clock.advance(1)
    ping(server, "0", "phone")
    server.clock.advance(1)
    ping(server, "3", "web")
    # The user stays online on the phone: no event for them; the web's stream
    # sees its device go offline, with its last visible status, never the 3.
    assert seen(user) == [("1", True), ("0", True)]
    assert events(web.response())[-1] == {
        "userid": "alice", "clientid": "web", "time": t0, "status": "1", "online": False}
    body = status_of(server)
    assert (body["status"], body["online"]) == ("0", True)
    assert body["devices"]["web"] == {"time": t0, "status": "1", "online": False}
    assert body["devices"]["phone"]["online"] is True
    assert "3" not in json.dumps(body)
    # The phone hides too: now the user goes offline, once, with its last visible ping.
    ping(server, "3", "phone")
    assert seen(user) == [("1", True), ("0", True), ("0", False)]
    ping(server, "3", "web")
    server.clock.advance(2 * T)  # both hidden devices time out: nothing more
    assert seen(user)[-1] == ("0", False) and len(seen(user)) == 3
    assert server.store.offline_transitions == 1


def test_a_hidden_device_that_never_showed_is_not_in_devices():
    server = hiding_server()
    ping(server, "0", "phone")
    ping(server, "3", "web")
    body = status_of(server)
    assert list(body["devices"]) == ["phone"] and body["online"] is True


def test_hidden_users_are_not_counted_online():

    server = hiding_server()
    ping(server, "0", "phone")
    ping(server, "0", "phone", "bob")
    ping(server, "3", "phone")
    got = samples(server)
    assert got[("heartbeat_online_users", ())] == 1
    assert got[("heartbeat_offline_transitions_total", ())] == 1


def test_a_reconnect_that_missed_the_hiding_gets_the_offline_state():
    server = hiding_server()
    first = watch(server)
    ping(server, "0")
    ping(server, "3")
    online_id, offline_id = ids(first)
    behind = watch(server, headers={"Last-Event-ID": online_id})
    assert seen(behind) == [("0", False)] and ids(behind) == [offline_id]
    caught_up = watch(server, headers={"Last-Event-ID": offline_id})
    assert events(caught_up.response()) == []


def test_a_multi_user_stream_sees_only_the_hidden_user_go_offline():
    server = hiding_server()
    ping(server, "0", "phone", "bob")
    stream = watch(server, "/subscribe?user=alice&user=bob")
    ping(server, "0")
    ping(server, "3")
    got = [(e["userid"], e["status"], e["online"]) for e in events(stream.response())]
    assert got == [("bob", "0", True), ("alice", "0", True), ("alice", "0", False)]


def test_unset_status_3_is_broadcast_as_beep_does_today():
    server = MemoryServer()
    stream = watch(server)
    ping(server, "0")
    ping(server, "3")
    assert seen(stream) == [("0", True), ("3", True)]
    assert status_of(server)["status"] == "3"
    assert server.store.offline_transitions == 0


# The rules, as every in-process store uses them.

def test_devices_hide_a_ping_as_their_device_going_offline():
    devices = Devices("alice")
    assert devices.ping(Ping("alice", 1, "3", "web"), HIDE) == ()
    assert devices.state() is None
    assert devices.ping(Ping("alice", 2, "0", "web"), HIDE) == (
        Presence("alice", 2, "0"), Presence("alice", 2, "0", True, "web"))
    assert devices.ping(Ping("alice", 3, "3", "web"), HIDE) == (
        Presence("alice", 2, "0", False, "web"), Presence("alice", 2, "0", False))
    assert devices.ping(Ping("alice", 4, "3", "web"), HIDE) == ()
    assert devices.latest == Ping("alice", 2, "0", "web")
    assert devices.offline("web") == ()


def test_devices_with_nothing_hidden_take_every_status():
    devices = Devices("alice")
    devices.ping(Ping("alice", 1, "0", "web"), Hiding())
    assert devices.ping(Ping("alice", 2, "3", "web"), Hiding())[0] == Presence("alice", 2, "3")
