"""What the hub needs of a store: reads, bus interest, and someone to hand bus traffic to.

Defined here, beside the hub, so core depends on no store; every store
(:mod:`heartbeat.store`) is a :class:`Feed`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from twisted.internet.defer import Deferred

from heartbeat.core.presence import Ping


class Listener(Protocol):
    """What a store hands its bus traffic to (the hub)."""

    def deliver(self, ping: Ping) -> None:
        """A ping was stored for a user this process subscribed to."""

    def bus_lost(self) -> None:
        """The bus is down: pings may go unheard until ``resync``."""

    def resync(self) -> None:
        """The bus was down: pings may have been missed, re-read stored state."""


class Feed(Protocol):
    """Stored pings, and the bus that brings new ones for the users subscribed."""

    listener: Listener | None

    def get(self, userids: Iterable[str]) -> Deferred[dict[str, Ping | None]]:
        """The stored ping of each user, in one round trip."""

    def subscribe(self, userid: str) -> Deferred[None]:
        """Start delivering ``userid``'s pings; fires once that is in effect."""

    def unsubscribe(self, userid: str) -> Deferred[None]:
        """Stop delivering ``userid``'s pings."""
