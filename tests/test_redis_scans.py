"""The keyspace walks' parts: which key is whose, and the control channel's messages."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from txredisapi import ConnectionError as RedisConnectionError

from heartbeat.core.presence import erased
from heartbeat.store.redis.codec import (
    disconnect_message,
    erased_message,
    from_control,
    from_message,
)
from heartbeat.store.redis.keys import control_channel, user_keys
from heartbeat.store.redis.scans import DeviceRetention, pattern, user_of


@pytest.mark.parametrize("userid", ["alice", "a}b", "a{b}c", "{heartbeat:z}", "x:online", "é*?"])
@pytest.mark.parametrize("cluster", [False, True])
def test_each_users_keys_are_known_as_theirs(userid, cluster):
    keys = user_keys("heartbeat:", userid, cluster)
    assert user_of(keys.online, "heartbeat:", cluster) == userid
    assert user_of(keys.devices, "heartbeat:", cluster, "devices") == userid
    assert user_of(keys.key, "heartbeat:", cluster) is None
    assert user_of(keys.devices, "heartbeat:", cluster) is None


@pytest.mark.parametrize("key", ["{other}:online", "{heartbeat:}:online", "heartbeat:a:online",
                                 "{heartbeat:a:online", "{}:online", "{:online",
                                 "{x}heartbeat:a:online", control_channel("heartbeat:")])
def test_other_keys_are_nobodys(key):
    assert user_of(key, "heartbeat:", False) is None


def test_patterns_escape_the_prefix():
    assert pattern("hb*[1]:", "online") == "{*hb\\*\\[1\\]:*:online"


def test_control_messages_and_the_erased_event():
    assert from_control(disconnect_message("dave")) == "dave"
    for text in ("", "{}", '{"disconnect": 3}', '{"disconnect": ""}', "[1]", None):
        assert from_control(text) is None
    assert from_message("alice", erased_message("alice")) == ((erased("alice"),), None)
    assert not control_channel("heartbeat:").startswith("heartbeat:")


class _Gone:
    """A topology whose Redis went away, or broke, mid-walk."""

    writable = True

    def __init__(self, error: Exception) -> None:
        self.error = error

    def scan_nodes(self) -> list[int]:
        return [0]

    def scan(self, *_: object) -> Deferred[object]:
        return fail(self.error)


@pytest.mark.parametrize("error, traceback", [
    (RedisConnectionError("Lost connection"), False),
    (RuntimeError("a bug"), True),
])
def test_a_walk_cut_short_by_a_lost_redis_is_one_line_and_a_bug_keeps_its_traceback(
        error, traceback):
    clock = Clock()
    retention = DeviceRetention(_Gone(error), "heartbeat:", False, 60.0, clock)  # type: ignore[arg-type]
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        retention.start()
        clock.advance(1)
    finally:
        retention.stop()
        globalLogPublisher.removeObserver(logged.append)
    mine = [e for e in logged if "forgetting old devices" in e.get("log_format", "")]
    assert len(mine) == 1
    assert ("log_failure" in mine[0]) is traceback
    assert mine[0]["log_level"] == LogLevel.warn
