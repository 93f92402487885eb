"""Redis stores run in the test's own reactor against a real Redis.

``make_redis_store`` (a fixture, imported by ``conftest.py`` with
``redis_address``, where it connects) starts them and stops them after the
test; ``Recorder`` is their listener; ``until`` lets the reactor run until
something holds; ``started`` waits until a store serves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from heartbeat.core.presence import Presence
from heartbeat.daemon.config import parse_redis
from heartbeat.store.redis.store import RedisStore
from tests.helpers.processes import RedisServer


class Recorder:
    """A listener that remembers what the store handed it: users' changes in
    ``pings``, devices' in ``devices``."""

    def __init__(self) -> None:
        self.pings: list[Presence] = []
        self.devices: list[Presence] = []
        self.resyncs = 0
        self.losses = 0

    def deliver(self, change: Presence, position: object = None, judged: object = None) -> None:
        (self.pings if change.clientid is None else self.devices).append(change)

    def bus_lost(self) -> None:
        self.losses += 1

    def resync(self) -> None:
        self.resyncs += 1


async def until(predicate: Callable[[], object], timeout: float = 10) -> None:
    """Let the reactor run until ``predicate()`` holds; fail after ``timeout``."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        assert reactor.seconds() < deadline, f"still not true after {timeout}s"
        await deferLater(reactor, 0.01)


async def started(store: RedisStore) -> RedisStore:
    """``store`` once it is connected and has read its state (its first resync)."""
    await until(lambda: store.available and store.listener.resyncs)
    return store


@pytest.fixture
def redis_address(redis_server: RedisServer) -> str:
    """Where ``make_redis_store``'s stores connect: the test's redis-server (a module
    overrides it to run its tests on one Redis, then on a Cluster)."""
    return redis_server.address


@pytest_twisted.async_yield_fixture
async def make_redis_store(redis_address: str) -> AsyncIterator[Callable[..., RedisStore]]:
    """``make_redis_store(redis=..., prefix=..., timeout=..., **options)``: a started
    store with a ``Recorder`` (on ``redis_address`` unless ``redis`` names another;
    ``options`` are ``RedisStore``'s), stopped after the test."""
    stores: list[RedisStore] = []

    def make(redis: str | None = None, prefix: str = "heartbeat:", timeout: float = 60,
             **options: Any) -> RedisStore:
        store = RedisStore(parse_redis(redis or redis_address), prefix, reactor, timeout,
                           **options)
        store.listener = Recorder()
        store.startService()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.stopService()
