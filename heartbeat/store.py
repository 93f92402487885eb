"""Where last pings live and how they reach the hub: the store interface.

Two stores implement it: :class:`MemoryStore` (one process, the default) and
the Redis store (many instances). Every method returns a Deferred because the
Redis one talks over the network; the hub drives ``subscribe`` and
``unsubscribe`` from its own interest, so a store only carries the pings that
some local stream watches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from twisted.internet.defer import Deferred, succeed

from heartbeat.errors import ApiError
from heartbeat.presence import Ping


class Listener(Protocol):
    """What a store hands its bus traffic to (the hub)."""

    def deliver(self, ping: Ping) -> None:
        """A ping was stored for a user this process subscribed to."""

    def bus_lost(self) -> None:
        """The bus is down: pings may go unheard until ``resync``."""

    def resync(self) -> None:
        """The bus was down: pings may have been missed, re-read stored state."""


class Store(Protocol):
    listener: Listener | None

    @property
    def available(self) -> bool:
        """Whether pings can be stored right now (drives 503s and /health)."""

    def ping(self, ping: Ping) -> Deferred[None]:
        """Store ``ping`` as its user's last and publish it, atomically.

        Fails with :class:`StoreUnavailable` when the ping was not stored.
        """

    def get(self, userids: Iterable[str]) -> Deferred[dict[str, Ping | None]]:
        """The stored ping of each user, in one round trip."""

    def subscribe(self, userid: str) -> Deferred[None]:
        """Start delivering ``userid``'s pings; fires once that is in effect."""

    def unsubscribe(self, userid: str) -> Deferred[None]:
        """Stop delivering ``userid``'s pings."""

    def close(self) -> Deferred[None]:
        """Release connections; called last on shutdown."""


class StoreUnavailable(ApiError):
    """The store cannot be reached; the client should retry shortly."""

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__(
            503, "the store is unreachable, retry later",
            {b"Retry-After": str(retry_after).encode()},
        )


class MemoryStore:
    """The in-process store and bus: one instance, nothing kept across restarts."""

    listener: Listener | None = None
    available = True

    def __init__(self) -> None:
        self._pings: dict[str, Ping] = {}
        self._subscribed: set[str] = set()

    def ping(self, ping: Ping) -> Deferred[None]:
        self._pings[ping.userid] = ping
        if ping.userid in self._subscribed and self.listener is not None:
            self.listener.deliver(ping)
        return succeed(None)

    def get(self, userids: Iterable[str]) -> Deferred[dict[str, Ping | None]]:
        return succeed({userid: self._pings.get(userid) for userid in userids})

    def subscribe(self, userid: str) -> Deferred[None]:
        self._subscribed.add(userid)
        return succeed(None)

    def unsubscribe(self, userid: str) -> Deferred[None]:
        self._subscribed.discard(userid)
        return succeed(None)

    def close(self) -> Deferred[None]:
        return succeed(None)
