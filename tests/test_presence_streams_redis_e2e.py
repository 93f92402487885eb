"""Presence streams across instances sharing a real Redis (one node, and a Cluster).

PRESENCE_TIMEOUT is 2 s and LEAVE_GRACE 3 s; the sweep runs every second. A
stream's device is held by the instance its connection landed on; the grace
and a dead instance are the store's exactly-once sweep's.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.claims import claim_header
from tests.helpers.clients import SSEClient, post_ping
from tests.helpers.processes import RedisServer
from tests.helpers.redis_cluster import RedisCluster

TIMEOUT = 2
GRACE = 3
SLACK = 2.5


@pytest.fixture(scope="module", params=["single", "cluster"])
def redis_url(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = Path(tmp_path_factory.mktemp(request.param))
    if request.param == "single":
        server = RedisServer(directory).start()
        yield server.address
        server.stop()
    else:
        cluster = RedisCluster(directory).start()
        yield cluster.url
        cluster.stop()


def daemons(start_daemon, redis_url: str, count: int) -> list:
    args = ["--redis", redis_url, "--presence-timeout", str(TIMEOUT),
            "--leave-grace", str(GRACE), "--keepalive", "1"]
    return [start_daemon(args) for _ in range(count)]


def presence(port: int, userid: str) -> SSEClient:
    return SSEClient(port, "/subscribe/nobody?presence=0", claim_header(userid, "web"))


def watchers(instances: list, userid: str) -> list[SSEClient]:
    return [SSEClient(d.port, path) for d in instances
            for path in (f"/subscribe/{userid}", f"/subscribe/{userid}/client/web")]


_users = iter(range(10**6))


def fresh_user() -> str:
    return f"presence-user-{next(_users)}-{time.monotonic_ns()}"


def settle(streams: list[SSEClient]) -> None:
    """Give the bus subscriptions of new watchers a moment (each reads the state first)."""
    for stream in streams:
        stream.no_event(0.3)


def held(instances: list, watched_on: list) -> tuple[str, list[SSEClient], SSEClient]:
    """A fresh user watched (user and device streams) on ``watched_on``, then holding a
    presence stream on ``instances[0]``: the user, the watchers, the presence stream."""
    userid = fresh_user()
    watching = watchers(watched_on, userid)
    settle(watching)
    stream = presence(instances[0].port, userid)
    for w in watching:
        assert w.event()["online"] is True
    return userid, watching, stream


def test_held_with_no_ping_then_offline_once_everywhere_after_the_grace(redis_url, start_daemon):
    a, b = daemons(start_daemon, redis_url, 2)
    _, watching, stream = held([a, b], [a, b])
    watching[0].no_event(3 * TIMEOUT)
    stream.close()
    closed = time.monotonic()
    watching[0].no_event(GRACE - 0.5)
    for w in watching:
        assert w.event(timeout=SLACK + 1)["online"] is False
    assert time.monotonic() - closed <= GRACE + SLACK
    for w in watching:
        w.no_event(0.5)


def test_reopened_on_the_other_instance_within_the_grace_no_watcher_sees_offline(
        redis_url, start_daemon):
    a, b = daemons(start_daemon, redis_url, 2)
    userid, watching, stream = held([a, b], [a, b])
    stream.close()
    time.sleep(GRACE / 3)  # a reload, landing on the other instance
    stream = presence(b.port, userid)
    for w in watching:
        assert w.event()["online"] is True  # the reopening is a ping
    for w in watching:
        w.no_event((GRACE + TIMEOUT + 1) / len(watching))
    watching[0].no_event(GRACE)
    stream.close()


def test_two_streams_of_one_device_on_two_instances_hold_it_until_both_end(
        redis_url, start_daemon):
    a, b = daemons(start_daemon, redis_url, 2)
    userid = fresh_user()
    watching = watchers([a], userid)
    settle(watching)
    first, second = presence(a.port, userid), presence(b.port, userid)
    assert watching[0].event()["online"] is True
    assert watching[0].event()["online"] is True
    first.close()  # its grace is overtaken by the other instance's renewal
    watching[0].no_event(GRACE + TIMEOUT + 1)
    second.close()
    assert watching[0].event(timeout=GRACE + SLACK)["online"] is False


def test_the_instance_holding_the_stream_killed_every_watcher_gets_one_offline(
        redis_url, start_daemon):
    holder, *others = daemons(start_daemon, redis_url, 3)
    _, watching, stream = held([holder], others)
    time.sleep(TIMEOUT)  # renewed meanwhile
    holder.stop(signal.SIGKILL)
    killed = time.monotonic()
    for w in watching:
        event = w.event(timeout=TIMEOUT + SLACK + 1)
        assert (event["online"], event["status"]) == (False, "0")
    # SPEC §3: within PRESENCE_TIMEOUT + 2 s (a second more for a loaded machine).
    assert time.monotonic() - killed <= TIMEOUT + 2 + 1
    for w in watching:
        w.no_event(1.5)  # two instances sweep: once
    stream.close()


def test_leave_on_another_instance_is_immediate_and_the_stream_no_longer_holds(
        redis_url, start_daemon):
    a, b = daemons(start_daemon, redis_url, 2)
    userid, watching, stream = held([a, b], [a])
    assert post_ping(b.port, "", None, path="/leave", headers=claim_header(userid, "web"))[0] == 200
    for w in watching:
        assert w.event(timeout=2)["online"] is False
    watching[0].no_event(2 * TIMEOUT)  # a's renewals do not bring it back
    assert stream.frame(timeout=2)  # the stream itself stays open
