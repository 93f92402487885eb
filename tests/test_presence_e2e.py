"""Presence against real processes: daemons sharing a real redis-server, killed and restarted.

PRESENCE_TIMEOUT is 2 s here so the suite stays fast; the sweep runs every second.
"""

from __future__ import annotations

import json
import signal
import time

from tests.helpers.clients import SSEClient, get, post_ping
from tests.helpers.processes import RedisServer
from tests.helpers.redis_checks import partition, subscribed
from tests.helpers.waiting import wait_for

TIMEOUT = 2
# The latest an offline event may come after its ping (SPEC §3), with room for a
# loaded CI machine.
LATEST = TIMEOUT + 5


def presence_daemons(start_daemon, redis_server: RedisServer, count: int) -> list:
    args = ["--redis", redis_server.address, "--presence-timeout", str(TIMEOUT)]
    return [start_daemon(args) for _ in range(count)]


def test_each_stream_on_every_instance_gets_one_offline_event_after_the_pinger_is_killed(
        redis_server, start_daemon):
    pinger, *others = presence_daemons(start_daemon, redis_server, 3)
    streams = [SSEClient(d.port, path) for d in others
               for path in ("/subscribe/alice", "/subscribe/alice/client/c1")]
    subscribed(redis_server, "heartbeat:alice", 2)
    sent = time.monotonic()
    assert post_ping(pinger.port, "0")[0] == 200
    for stream in streams:
        assert stream.event()["online"] is True
    pinger.stop(signal.SIGKILL)

    for stream in streams:
        event = stream.event(timeout=LATEST)
        assert time.monotonic() - sent >= TIMEOUT
        assert (event["status"], event["online"]) == ("0", False)
    # Two instances sweep every second: neither publishes the transition again.
    for stream in streams:
        stream.no_event(1.5)
    zset = "{heartbeat:deadlines:" + str(partition("alice")) + "}"
    assert redis_server.command("ZCARD", zset) == b"0\n"
    for stream in streams:
        stream.close()


def test_a_deadline_due_while_redis_is_down_is_sent_once_it_is_back(redis_server, start_daemon):
    daemons = presence_daemons(start_daemon, redis_server, 2)
    streams = [SSEClient(d.port, "/subscribe/alice") for d in daemons]
    subscribed(redis_server, "heartbeat:alice", 2)
    assert post_ping(daemons[0].port, "1")[0] == 200
    for stream in streams:
        assert stream.event()["online"] is True
    redis_server.command("SAVE")  # the restarted server starts from this
    redis_server.stop()
    time.sleep(TIMEOUT + 1.5)  # the deadline passes with nobody to sweep it
    for stream in streams:
        stream.no_event(0.1)
    redis_server.start()
    for stream in streams:
        event = stream.event(timeout=15)
        assert (event["status"], event["online"]) == ("1", False)
    for stream in streams:
        stream.no_event(1.5)
        stream.close()


def test_users_online_when_the_daemon_restarts_still_go_offline_on_time(
        redis_server, start_daemon):
    (daemon,) = presence_daemons(start_daemon, redis_server, 1)
    assert post_ping(daemon.port, "0")[0] == 200
    sent = time.monotonic()
    daemon.stop(signal.SIGKILL)
    (again,) = presence_daemons(start_daemon, redis_server, 1)
    stream = SSEClient(again.port, "/subscribe/alice")
    first = stream.event()
    if first["online"]:  # the restart was quicker than the timeout
        first = stream.event(timeout=LATEST)
    assert time.monotonic() - sent >= TIMEOUT
    assert (first["status"], first["online"]) == ("0", False)
    status = json.loads(get(again.port, "/status?user=alice")[2])
    assert status["alice"]["online"] is False
    assert status["alice"]["devices"] == {"c1": {"time": first["time"], "status": "0",
                                                 "online": False}}
    stream.close()


def test_the_bus_carries_json_both_ways(redis_server, start_daemon):
    (daemon,) = presence_daemons(start_daemon, redis_server, 1)
    stream = SSEClient(daemon.port, "/subscribe/alice")
    subscribed(redis_server, "heartbeat:alice", 1)
    # Another service publishing into heartbeat's channel, with any JSON library.
    redis_server.command("PUBLISH", "heartbeat:alice",
                         json.dumps({"time": 1700000000, "status": "2"}))
    assert stream.event() == {"userid": "alice", "time": 1700000000, "status": "2",
                              "online": True}
    redis_server.command("PUBLISH", "heartbeat:alice",
                         '{"time": 1700000001, "status": "1", "online": false}')
    assert stream.event()["online"] is False
    redis_server.command("PUBLISH", "heartbeat:alice", '{"time": "soon", "status": "1"}')
    stream.no_event(0.3)  # not a change: ignored
    stream.close()


def test_metrics_count_online_users_and_transitions(redis_server, start_daemon):
    (daemon,) = presence_daemons(start_daemon, redis_server, 1)
    assert post_ping(daemon.port, "0")[0] == 200
    assert post_ping(daemon.port, "0", "bob")[0] == 200
    assert post_ping(daemon.port, "", None, path="/leave",
                     headers={"X-User-Claim": '{"userid": "bob", "clientid": "c1"}'})[0] == 200
    wait_for(lambda: "heartbeat_online_users 1.0" in get(daemon.port, "/metrics")[2].decode(), 10)
    assert "heartbeat_offline_transitions_total 1.0" in get(daemon.port, "/metrics")[2].decode()
