"""A Redis that comes back without its data (SPEC §4): nobody stays online for ever."""

from __future__ import annotations

import time

from tests.helpers.clients import SSEClient, post_ping
from tests.helpers.waiting import wait_for


def next_change(stream: SSEClient, timeout: float = 15) -> dict:
    """The next event that is not the online state again: a stream opened just before
    the ping may get that state twice (its first read and the bus), as SPEC §4 allows."""
    event = stream.event(timeout=timeout)
    while event["online"]:
        event = stream.event(timeout=timeout)
    return event


def test_watchers_of_online_users_get_one_offline_event_after_redis_comes_back_empty(
        redis_server, start_daemon):
    daemon = start_daemon(["--redis", redis_server.address])
    users = ["alice", "bob", "carol"]
    watchers = {user: [SSEClient(daemon.port, f"/subscribe/{user}") for _ in range(2)]
                for user in users}
    device = SSEClient(daemon.port, "/subscribe/alice/client/c1")
    for user in users:
        assert post_ping(daemon.port, f"s-{user}", user)[0] == 200
        for stream in watchers[user]:
            assert stream.event()["online"] is True
    assert device.event()["online"] is True

    redis_server.stop()  # no persistence: it comes back empty
    redis_server.start()
    restarted = time.monotonic()
    for user in users:
        for stream in watchers[user]:
            event = next_change(stream)
            assert event == {"time": event["time"], "status": f"s-{user}", "userid": user,
                             "online": False}
    assert time.monotonic() - restarted < 15
    gone = next_change(device)
    assert (gone["clientid"], gone["status"], gone["online"]) == ("c1", "s-alice", False)
    # Once: nothing more, until a ping brings them back.
    watchers["bob"][0].no_event(2)
    wait_for(lambda: post_ping(daemon.port, "back", "bob")[0] == 200, timeout=10)
    assert watchers["bob"][0].event()["online"] is True


def test_a_flush_with_no_reconnect_is_noticed_by_the_sweep(any_redis, start_daemon):
    daemon = start_daemon(["--redis", any_redis.url])
    watcher = SSEClient(daemon.port, "/subscribe/alice")
    assert post_ping(daemon.port, "busy", "alice")[0] == 200
    assert watcher.event()["online"] is True
    any_redis.flush()
    flushed = time.monotonic()
    gone = next_change(watcher)
    assert (gone["status"], gone["online"]) == ("busy", False)
    assert time.monotonic() - flushed < 15
    watcher.no_event(2)  # once
