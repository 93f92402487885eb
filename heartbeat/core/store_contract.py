"""The store ⇄ hub contract: what the hub needs of a store (a :class:`HubStore`),
whom a store hands bus traffic to (a :class:`BusListener`), and the whole
:class:`Store` the daemon and the web layer use.

Defined here, in core, so the hub and the web layer depend on no store and
the stores (:mod:`heartbeat.store`) on nothing but core: each is a
:class:`Store`.

Three stores implement it: :class:`~heartbeat.store.sqlite.SQLiteStore` (one
process, the default: state in memory, committed to a SQLite file first),
:class:`~heartbeat.store.memory.MemoryStore` (one process, nothing kept) and
the Redis store (many instances). Every method returns a Deferred because the
Redis one talks over the network; the hub drives ``subscribe`` and
``unsubscribe`` from its own interest, so a store only carries the changes
that some local stream watches.

Presence (SPEC §3) is the store's to decide, because only the store sees
every instance's pings: it keeps each device's deadline (``PRESENCE_TIMEOUT``
after its last ping), sweeps the due ones at most once a second, and
publishes each device's and user's offline change exactly once, even when
several processes share the store. The presence rules themselves are
:class:`~heartbeat.core.presence.Devices`'.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from twisted.internet.defer import Deferred

from heartbeat.core.changes import Position
from heartbeat.core.errors import Unavailable
from heartbeat.core.presence import Ping, Presence, UserState


class BusListener(Protocol):
    """What a store hands its bus traffic to (the hub)."""

    def deliver(self, change: Presence, position: Position | None = None,
                judged: bool | None = None) -> None:
        """A change was stored for a user this process subscribed to.

        A ping is two changes, the user's then the device's; a device going
        offline is the device's, then the user's if it was their last.
        ``position`` is given when the store recorded the view in its change
        feed (it changed visibly: SPEC §8): that test is made once, where
        the change is made, for every ``changes=only`` stream. ``judged``
        says whether the store made that test for this change (None: as its
        bus always does; false for a message another service published).
        """

    def bus_lost(self) -> None:
        """The bus is down: pings may go unheard until ``resync``."""

    def resync(self) -> object:
        """The bus was down: pings may have been missed, re-read stored state."""

    def disconnect(self, userid: str) -> None:
        """End the streams opened here with ``userid``'s credentials (a logout, a ban)."""


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


class Store(HubStore, Protocol):
    """What the hub reads (a :class:`HubStore`), that also takes pings and reports its health."""

    # What /health calls it: "sqlite", "memory" or "redis".
    kind: str
    # Per connection ("commands", "subscriber"): times it came back after a loss.
    reconnects: dict[str, int]

    @property
    def available(self) -> bool:
        """Whether pings can be stored right now (drives 503s and /health)."""

    @property
    def loaded(self) -> bool:
        """Whether presence is loaded: the embedded store reads its online users
        after the port opens (``/readyz`` says 503 until then); the others, always."""

    # User online→offline changes this process made (a sweep, a leave, or hiding);
    # summed over the instances sharing a store, each transition counts once.
    offline_transitions: int

    def online_users(self) -> int | None:
        """Users online now, across every instance (None while not known)."""

    def ping(self, ping: Ping) -> Deferred[None]:
        """Store ``ping`` for its user and device, re-arm the device's
        deadline, and publish the change, atomically.

        The user's ``time`` and ``status`` become the ping's and the user and
        device are online. Publishes the user's change, then the device's
        (see :meth:`~heartbeat.core.store_contract.BusListener.deliver`). A ping whose
        status hides (``HIDDEN_STATUSES``) only re-arms the deadline and is,
        to watchers, the device going offline, as in :meth:`leave`. Fails
        with :class:`StoreUnavailable` when the ping was not stored.
        """

    def rearm(self, devices: Sequence[tuple[str, str]], after: float) -> Deferred[None]:
        """Each of ``devices`` (user, device) that has a deadline is due offline
        ``after`` seconds from now: a presence stream's renewal, or its grace.

        Nothing is published and nothing else changes; a device offline (left,
        timed out) stays so. Fails with :class:`StoreUnavailable` when not stored.
        """

    def leave(self, userid: str, clientid: str) -> Deferred[None]:
        """The device goes offline now, its deadline dropped, atomically.

        Publishes the device's offline change, then the user's if that was
        their last online device; nothing for a device not online (never
        pinged, left already, timed out). Fails with
        :class:`StoreUnavailable` when it was not stored.
        """

    def online_page(self, after: str | None, limit: int) -> Deferred[tuple[list[str], str | None]]:
        """Up to ``limit`` users online now, and the token of the next page (None: the last).

        ``after`` is a token this store gave; paging from None to the last
        page names each user online throughout exactly once. A token that is
        not one fails with :class:`~heartbeat.core.errors.BadInput`.
        """

    def erase(self, userid: str) -> Deferred[None]:
        """Forget every trace of ``userid`` (latest ping, devices, deadlines), atomically,
        and publish the ``erased`` change to their watchers."""

    def disconnect(self, userid: str) -> Deferred[None]:
        """Have every instance end the streams opened with ``userid``'s credentials
        (:meth:`BusListener.disconnect` on each)."""

    def close(self) -> Deferred[None]:
        """Release connections; called last on shutdown."""


class StoreUnavailable(Unavailable):
    """The store cannot be reached; the client should retry shortly."""

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__("the store is unreachable, retry later", retry_after)
