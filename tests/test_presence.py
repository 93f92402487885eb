"""Presence (SPEC §3) in one process: devices, timeouts on a fake clock, leave, device streams."""

from __future__ import annotations

import json

import pytest

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

SECRET = "a-test-secret-of-at-least-32-bytes!"


def test_a_device_goes_offline_at_the_timeout_and_not_a_moment_before():
    server = MemoryServer()
    stream = watch(server)
    assert ping(server, "0") == 200
    server.clock.advance(T - 0.001)
    assert seen(stream) == [("0", True)]
    server.clock.advance(0.001)
    assert seen(stream) == [("0", True), ("0", False)]
    server.clock.advance(10 * T)
    assert seen(stream) == [("0", True), ("0", False)]  # once


def test_the_offline_event_keeps_the_last_ping_and_a_ping_brings_the_user_back():
    server = MemoryServer()
    stream = watch(server)
    t0 = int(server.clock.seconds())
    ping(server, "2")
    server.clock.advance(T)
    ping(server, "0")
    got = events(stream.response())
    assert [(e["time"], e["online"]) for e in got] == [(t0, True), (t0, False), (t0 + T, True)]
    assert got[1] == {"userid": "alice", "time": t0, "status": "2", "online": False}


def test_a_ping_re_arms_the_device_deadline():
    server = MemoryServer()
    stream = watch(server)
    ping(server, "0")
    server.clock.advance(T - 1)
    ping(server, "1")
    server.clock.advance(T - 1)
    assert seen(stream) == [("0", True), ("1", True)]
    server.clock.advance(1)
    assert seen(stream)[-1] == ("1", False)


def test_two_devices_one_times_out_the_other_keeps_the_user_online():
    server = MemoryServer()
    user = watch(server)
    phone = watch(server, "/subscribe/alice/client/phone")
    ping(server, "1", "phone")
    server.clock.advance(30)
    ping(server, "0", "web")
    server.clock.advance(T - 30)  # the phone's deadline
    assert seen(user) == [("1", True), ("0", True)]
    assert seen(phone) == [("1", True), ("1", False)]
    server.clock.advance(30)  # the web's: the last device
    assert seen(user) == [("1", True), ("0", True), ("0", False)]
    assert len(seen(phone)) == 2


def test_a_device_stream_sees_only_its_device_and_says_which():
    server = MemoryServer()
    ping(server, "1", "phone")
    phone = watch(server, "/subscribe/alice/client/phone")
    web = watch(server, "/subscribe/alice/client/web")  # never pinged: no first event
    ping(server, "0", "web")
    assert [(e["clientid"], e["status"]) for e in events(phone.response())] == [("phone", "1")]
    assert [(e["clientid"], e["status"]) for e in events(web.response())] == [("web", "0")]
    assert leave(server, "phone") == 200
    assert events(phone.response())[-1] == {
        "userid": "alice", "clientid": "phone", "time": events(phone.response())[0]["time"],
        "status": "1", "online": False}
    assert len(events(web.response())) == 1


def test_leave_takes_the_device_offline_at_once_and_only_once():
    server = MemoryServer()
    stream = watch(server)
    ping(server, "0", "phone")
    ping(server, "1", "web")
    assert leave(server, "phone") == 200
    assert seen(stream) == [("0", True), ("1", True)]  # the web still holds the user
    assert leave(server, "web") == 200
    assert seen(stream)[-1] == ("1", False)
    assert leave(server, "web") == 200
    assert leave(server, "never-pinged", "nobody") == 200
    server.clock.advance(2 * T)  # the left devices' deadlines are gone too
    assert len(seen(stream)) == 3
    assert server.store.offline_transitions == 1


def test_leave_needs_an_identity_like_a_ping():
    server = MemoryServer()
    status, body = response(server.send("POST", "/leave").take())
    assert status == 400 and b"error" in body
    status, _ = response(server.send(
        "POST", "/leave", b"", {"X-User-Claim": '{"userid": "alice", "clientid": 7}'}).take())
    assert status == 400


def test_a_non_string_clientid_is_refused_and_stores_nothing():
    server = MemoryServer()
    conn = server.send("POST", "/ping", b"0", {"X-User-Claim": '{"userid": "a", "clientid": 1}'})
    assert response(conn.take())[0] == 400
    status, body = response(server.send("GET", "/status?user=a").take())
    assert body == b'{"a":null}'


def test_status_has_online_and_every_device():
    server = MemoryServer()
    t0 = int(server.clock.seconds())
    ping(server, "1", "phone")
    server.clock.advance(30)
    ping(server, "0", "web-1")
    server.clock.advance(T - 30)
    status, body = response(server.send("GET", "/status?user=alice&user=bob").take())
    assert status == 200
    assert json.loads(body) == {
        "alice": {"time": t0 + 30, "status": "0", "online": True, "devices": {
            "phone": {"time": t0, "status": "1", "online": False},
            "web-1": {"time": t0 + 30, "status": "0", "online": True}}},
        "bob": None,
    }


def test_no_clientid_is_the_device_named_empty():
    server = MemoryServer()
    conn = server.send("POST", "/ping", b"0", {"X-User-Claim": '{"userid": "alice"}'})
    assert response(conn.take())[0] == 200
    body = json.loads(response(server.send("GET", "/status?user=alice").take())[1])
    assert list(body["alice"]["devices"]) == [""]


def test_last_event_id_across_an_offline_event():
    server = MemoryServer()
    first = watch(server)
    ping(server, "0")
    server.clock.advance(T)
    online_id, offline_id = ids(first)
    first.close()
    # Saw the offline event: nothing to resend.
    caught_up = watch(server, headers={"Last-Event-ID": offline_id})
    assert events(caught_up.response()) == []
    # Missed it: the offline state comes first.
    behind = watch(server, headers={"Last-Event-ID": online_id})
    assert seen(behind) == [("0", False)] and ids(behind) == [offline_id]


def test_offline_users_and_transitions_are_metrics():

    server = MemoryServer()
    ping(server, "0", "phone")
    ping(server, "0", "web", "bob")
    assert samples(server)[("heartbeat_online_users", ())] == 2
    server.clock.advance(T)
    got = samples(server)
    assert got[("heartbeat_online_users", ())] == 0
    assert got[("heartbeat_offline_transitions_total", ())] == 2


def sweeps(server: MemoryServer) -> list:
    expire = server.store._deadlines._expire
    return [c for c in server.clock.getDelayedCalls() if c.func == expire]


def test_one_sweep_timer_for_everyone_and_none_when_nobody_is_online():
    server = MemoryServer()
    assert sweeps(server) == []
    for n in range(100):  # a hundred devices: still one timer
        server.clock.advance(0.001)
        ping(server, "0", f"d{n}")
    assert len(sweeps(server)) == 1
    server.clock.advance(T + 1)
    assert sweeps(server) == []


@pytest.mark.parametrize("timeout", ["0", "-1", "soon"])
def test_a_bad_presence_timeout_is_a_bad_setting(timeout):
    from twisted.python.usage import UsageError

    from heartbeat.daemon.config import load_settings

    with pytest.raises(UsageError, match="PRESENCE_TIMEOUT"):
        load_settings({}, {"PRESENCE_TIMEOUT": timeout}, {})


def test_the_device_of_a_token_is_its_clientid_claim():
    import jwt

    server = MemoryServer(JWT_SECRET=SECRET)
    token = jwt.encode({"userid": "alice", "clientid": "phone"}, SECRET, algorithm="HS256")
    bearer = {"Authorization": f"Bearer {token}"}
    phone = watch(server, "/subscribe/alice/client/phone", bearer)
    assert response(server.send("POST", "/ping", b"0", bearer).take())[0] == 200
    assert [e["clientid"] for e in events(phone.response())] == ["phone"]
    bad = jwt.encode({"userid": "alice", "clientid": 3}, SECRET, algorithm="HS256")
    status, _ = response(server.send(
        "POST", "/ping", b"0", {"Authorization": f"Bearer {bad}"}).take())
    assert status == 401
