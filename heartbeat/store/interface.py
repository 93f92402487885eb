"""Where last pings live and how they reach the hub: the store interface.

Two stores implement it: :class:`~heartbeat.store.memory.MemoryStore` (one
process, the default) and the Redis store (many instances). Every method returns a Deferred because the
Redis one talks over the network; the hub drives ``subscribe`` and
``unsubscribe`` from its own interest, so a store only carries the pings that
some local stream watches.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred

from heartbeat.core.errors import Unavailable
from heartbeat.core.feed import Feed
from heartbeat.core.presence import Ping


class Store(Feed, Protocol):
    """A feed (what the hub reads) that also takes pings and reports its health."""

    # What /health calls it: "memory" or "redis".
    kind: str
    # Per connection ("commands", "subscriber"): times it came back after a loss.
    reconnects: dict[str, int]

    @property
    def available(self) -> bool:
        """Whether pings can be stored right now (drives 503s and /health)."""

    def ping(self, ping: Ping) -> Deferred[None]:
        """Store ``ping`` as its user's last and publish it, atomically.

        Fails with :class:`StoreUnavailable` when the ping was not stored.
        """

    def close(self) -> Deferred[None]:
        """Release connections; called last on shutdown."""


class StoreUnavailable(Unavailable):
    """The store cannot be reached; the client should retry shortly."""

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__("the store is unreachable, retry later", retry_after)
