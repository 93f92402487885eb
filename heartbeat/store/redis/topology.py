"""The seam between the Redis store and where its keys live.

:class:`~heartbeat.store.redis.store.RedisStore` holds everything that does
not depend on it (batching, ``REDIS_WAIT_REPLICAS``, reads, the bus relay,
resync, health, metrics, the sweep loop); a :class:`Topology` holds what
does: which connection a key goes to, ``PUBLISH`` or ``SPUBLISH``, one
subscriber or one per shard, how the deadline partitions are swept. Two
exist: :class:`~heartbeat.store.redis.single.SingleTopology` (one Redis,
or the master Sentinel names) and
:class:`~heartbeat.store.redis.cluster_topology.ClusterTopology`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from heartbeat.core.presence import Ping, Presence

# A ping's outcome: a code of codes.lua, the error's text that refused it, or
# the Failure of the command that carried it; then what its WAIT counted (None
# when REDIS_WAIT_REPLICAS is 0).
Outcome = tuple[object, object]


@dataclass(frozen=True)
class Swept:
    """One sweep: users online (as the counts say), users taken offline, and whether
    a partition was full (so another sweep follows at once)."""

    online: int
    gone: int
    again: bool
    # Redis lost its data (due.lua found a count missing): the hub reads again.
    lost: bool = False


class Events(Protocol):
    """What a topology tells its store."""

    def message(self, channel: str, text: str) -> None:
        """A message on a subscribed channel."""

    def bus_lost(self) -> None:
        """Messages may have been missed: the hub must hold what it delivers."""

    def ready(self) -> None:
        """A link is (back) up: once :attr:`Topology.available`, the hub resyncs."""


class Topology(Protocol):
    # Per connection kind ("commands", "subscriber"): times it came back.
    reconnects: dict[str, int]

    @property
    def available(self) -> bool:
        """Pings are stored and every wanted channel is heard."""

    @property
    def writable(self) -> bool:
        """Worth sending commands at all (else 503 at once, nothing queued)."""

    @property
    def failovers(self) -> int: ...

    @property
    def liveness_failures(self) -> dict[str, int]: ...

    def start(self, events: Events) -> None: ...

    def stop(self) -> Deferred[None]: ...

    def store(self, pings: list[tuple[Ping, bool]], timeout: float,
              wait_replicas: int) -> Deferred[list[Outcome]]:
        """Store and publish each (ping, hides), in order; an outcome per ping."""

    def leave(self, userid: str, clientid: str) -> Deferred[int]:
        """Take a device offline now: 1 if its user went offline."""

    def rearm(self, devices: list[tuple[str, str]], after: float) -> Deferred[None]:
        """Each device with a deadline is due ``after`` seconds from now (presence streams)."""

    def read(self, userids: list[str]) -> Deferred[list[Any]]:
        """Each user's stored row (``codec.from_row``), in order."""

    def sweep(self, batch: int) -> Deferred[Swept]:
        """Take offline every device whose deadline passed, at most ``batch`` per partition."""

    def restore(self, latest: Ping, devices: Iterable[tuple[Presence, float]]) -> Deferred[None]:
        """Put back a user another store kept, publishing nothing."""

    def erase(self, userid: str, message: str) -> Deferred[int]:
        """Delete every key of the user and emit ``message`` (their erased event),
        atomically: 1 if they were online."""

    def notify(self, channel: str, message: str) -> Deferred[object]:
        """Publish ``message`` on ``channel`` (the control channel), on its shard."""

    def scan_nodes(self) -> list[int]:
        """The nodes a keyspace scan visits, each named by the lowest slot it holds."""

    def scan(self, node: int, cursor: int, match: str, count: int, kind: str) -> Deferred[Any]:
        """One ``SCAN cursor MATCH match COUNT count TYPE kind`` on ``node``."""

    def prune(self, userids: list[str], cutoff: float) -> Deferred[object]:
        """Forget the users' devices offline and last seen before ``cutoff``."""

    def subscribe(self, channel: str) -> Deferred[None]: ...

    def unsubscribe(self, channel: str) -> Deferred[None]: ...

    def refused(self, error: object) -> None:
        """A write was refused with ``error``: the topology may know why (a replica)."""
