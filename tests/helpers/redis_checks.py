"""Checks of a real redis-server that several test files make."""

from __future__ import annotations

import json
import time

from tests.helpers.clients import post_ping
from tests.helpers.processes import RedisServer
from tests.helpers.waiting import wait_for


def numsub(redis_server: RedisServer, channel: str) -> int:
    """How many subscribers ``channel`` has."""
    return int(redis_server.command("PUBSUB", "NUMSUB", channel).split()[1])


def assert_unavailable(answer: tuple[int, dict[str, str], bytes]) -> None:
    """A proper 503: ``Retry-After`` and a JSON error."""
    code, headers, body = answer
    assert code == 503
    assert headers["retry-after"].isdigit()
    assert "error" in json.loads(body)


def ping_until_stored(port: int, status: str, userid: str = "alice",
                      timeout: float = 10) -> int:
    """POST until one is stored; every answer before it must be a proper 503.

    Returns how many 503s came first.
    """
    deadline = time.monotonic() + timeout
    refused = 0
    while True:
        answer = post_ping(port, status, userid)
        if answer[0] == 200:
            return refused
        assert_unavailable(answer)
        refused += 1
        assert time.monotonic() < deadline, f"no 200 after {timeout}s"
        time.sleep(0.05)


def subscribed(redis_server: RedisServer, channel: str, count: int) -> None:
    """Until ``channel`` has ``count`` subscribers."""
    wait_for(lambda: numsub(redis_server, channel) == count, 10)


def partition(userid: str) -> int:
    """Which deadlines partition ``userid``'s keys are in (the default prefix)."""
    from heartbeat.store.redis.keys import user_keys

    return user_keys("heartbeat:", userid).partition
