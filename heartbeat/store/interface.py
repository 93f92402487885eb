"""Where presence lives and how its changes reach the hub: the store interface.

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

from typing import Protocol

from twisted.internet.defer import Deferred

from heartbeat.core.errors import Unavailable
from heartbeat.core.presence import Ping
from heartbeat.core.store_contract import HubStore


class Store(HubStore, Protocol):
    """A feed (what the hub reads) that also takes pings and reports its health."""

    # What /health calls it: "sqlite", "memory" or "redis".
    kind: str
    # Per connection ("commands", "subscriber"): times it came back after a loss.
    reconnects: dict[str, int]

    @property
    def available(self) -> bool:
        """Whether pings can be stored right now (drives 503s and /health)."""

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

    def leave(self, userid: str, clientid: str) -> Deferred[None]:
        """The device goes offline now, its deadline dropped, atomically.

        Publishes the device's offline change, then the user's if that was
        their last online device; nothing for a device not online (never
        pinged, left already, timed out). Fails with
        :class:`StoreUnavailable` when it was not stored.
        """

    def close(self) -> Deferred[None]:
        """Release connections; called last on shutdown."""


class StoreUnavailable(Unavailable):
    """The store cannot be reached; the client should retry shortly."""

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__("the store is unreachable, retry later", retry_after)
