"""HIDDEN_STATUSES against the real daemon: in memory, and on a shared redis-server with
two instances and two devices (SPEC §1, §3, §4)."""

from __future__ import annotations

import json

from tests.helpers.claims import claim_header
from tests.helpers.clients import SSEClient, get, post_ping
from tests.helpers.processes import RedisServer
from tests.helpers.redis_checks import partition, subscribed


def ping_as(port: int, status: str, device: str, userid: str = "alice") -> None:
    assert post_ping(port, status, None, headers=claim_header(userid, device))[0] == 200


def status_of(port: int, userid: str = "alice") -> dict:
    status, _, body = get(port, f"/status?user={userid}")
    assert status == 200
    return json.loads(body)[userid]


def test_hiding_on_the_in_process_daemon(start_daemon):
    daemon = start_daemon(env={"HIDDEN_STATUSES": "3"})
    stream = SSEClient(daemon.port, "/subscribe/alice")
    ping_as(daemon.port, "1", "phone")
    shown = stream.event()
    assert (shown["status"], shown["online"]) == ("1", True)
    ping_as(daemon.port, "3", "phone")
    assert stream.event() == {**shown, "online": False}
    ping_as(daemon.port, "3", "phone")
    stream.no_event()
    assert status_of(daemon.port) == {"time": shown["time"], "status": "1", "online": False,
                                      "devices": {"phone": {"time": shown["time"], "status": "1",
                                                            "online": False}}}
    ping_as(daemon.port, "0", "phone")
    event = stream.event()
    assert (event["status"], event["online"]) == ("0", True)
    stream.close()


def test_two_devices_hide_and_show_across_two_instances_on_redis(redis_server, start_daemon):
    args = ["--redis", redis_server.address, "--hidden-statuses", "3"]
    a, b = start_daemon(args), start_daemon(args)
    users = [SSEClient(d.port, "/subscribe/alice") for d in (a, b)]
    webs = [SSEClient(d.port, "/subscribe/alice/client/web") for d in (a, b)]
    subscribed(redis_server, "heartbeat:alice", 2)

    ping_as(b.port, "1", "web")
    web_shown = [stream.event() for stream in webs]
    assert all((e["status"], e["online"]) == ("1", True) for e in web_shown)
    assert all(stream.event()["status"] == "1" for stream in users)
    ping_as(a.port, "0", "phone")
    phone_shown = [stream.event() for stream in users]
    assert all((e["status"], e["online"]) == ("0", True) for e in phone_shown)

    # The web hides on b: its device streams, on both instances, see it go offline
    # with its last visible status; the user stays online on the phone.
    ping_as(b.port, "3", "web")
    for stream, shown in zip(webs, web_shown):
        assert stream.event() == {**shown, "online": False}
    for stream in users:
        stream.no_event()
    for daemon in (a, b):
        body = status_of(daemon.port)
        assert (body["status"], body["online"]) == ("0", True)
        assert body["devices"]["web"] == {"time": web_shown[0]["time"], "status": "1",
                                          "online": False}
    stored = redis_server.command("HGETALL", "heartbeat:alice").split()
    assert stored == [b"time", str(phone_shown[0]["time"]).encode(), b"status", b"0"]

    # The phone hides on a: the user goes offline, once on every stream, with the
    # phone's last visible ping; hidden pings after it send nothing anywhere.
    ping_as(a.port, "3", "phone")
    for stream, shown in zip(users, phone_shown):
        assert stream.event() == {**shown, "online": False}
    ping_as(a.port, "3", "phone")
    ping_as(b.port, "3", "web")
    for stream in users + webs:
        stream.no_event()
    for daemon in (a, b):
        body = status_of(daemon.port)
        assert (body["time"], body["status"], body["online"]) == (
            phone_shown[0]["time"], "0", False)
        assert "3" not in {device["status"] for device in body["devices"].values()}
    assert redis_server.command("HGET", "heartbeat:alice", "status") == b"0\n"
    assert redis_server.command("SCARD", "{heartbeat:alice}:online") == b"0\n"
    # Still connected, only hidden: both devices' deadlines are armed, in the future.
    now = float(redis_server.command("TIME").split()[0])
    zset = "{heartbeat:deadlines:" + str(partition("alice")) + "}"
    for device in ("web", "phone"):
        member = json.dumps(["alice", device], separators=(",", ":"))
        assert float(redis_server.command("ZSCORE", zset, member)) > now + 50
    metrics = get(a.port, "/metrics")[2].decode()
    assert "heartbeat_offline_transitions_total 1.0" in metrics

    # Visible again on b: an ordinary online event everywhere.
    ping_as(b.port, "2", "web")
    for stream in users + webs:
        event = stream.event()
        assert (event["status"], event["online"]) == ("2", True)
    for stream in users + webs:
        stream.close()


def test_unset_a_3_is_stored_and_sent_as_beep_does(redis_server: RedisServer, start_daemon):
    daemon = start_daemon(["--redis", redis_server.address])
    stream = SSEClient(daemon.port, "/subscribe/alice")
    subscribed(redis_server, "heartbeat:alice", 1)
    ping_as(daemon.port, "0", "phone")
    assert stream.event()["status"] == "0"
    ping_as(daemon.port, "3", "phone")
    event = stream.event()
    assert (event["status"], event["online"]) == ("3", True)
    assert redis_server.command("HGET", "heartbeat:alice", "status") == b"3\n"
    assert status_of(daemon.port)["online"] is True
    stream.close()
