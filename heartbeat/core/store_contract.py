"""What the hub needs of a store: reads, bus interest, and someone to hand bus traffic to.

Defined here, beside the hub, so core depends on no store; every store
(:mod:`heartbeat.store`) is a :class:`HubStore`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from twisted.internet.defer import Deferred

from heartbeat.core.presence import Presence, UserState


class BusListener(Protocol):
    """What a store hands its bus traffic to (the hub)."""

    def deliver(self, change: Presence) -> None:
        """A change was stored for a user this process subscribed to.

        A ping is two changes, the user's then the device's; a device going
        offline is the device's, then the user's if it was their last.
        """

    def bus_lost(self) -> None:
        """The bus is down: pings may go unheard until ``resync``."""

    def resync(self) -> object:
        """The bus was down: pings may have been missed, re-read stored state."""


class HubStore(Protocol):
    """Stored presence, and the bus that brings its changes for the users subscribed."""

    listener: BusListener | None

    def get(self, userids: Iterable[str]) -> Deferred[dict[str, UserState | None]]:
        """Each user's stored state (None if they never pinged), in one round trip.

        The state is the user's view (latest ping, online while any device
        is) and every device's that ever pinged; ``online`` is as of the
        last sweep, so it may lag a due timeout by up to a sweep.
        """

    def subscribe(self, userid: str) -> Deferred[None]:
        """Start delivering ``userid``'s changes; fires once that is in effect."""

    def unsubscribe(self, userid: str) -> Deferred[None]:
        """Stop delivering ``userid``'s changes."""
