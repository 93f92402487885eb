"""Walks over the keyspace, by ``SCAN``: who is online, and devices to forget.

``GET /online?list=1`` on Redis lists who is online, a page at a time.

A user is online exactly while their online set (``…:online``, the devices
online now) exists: Redis deletes an empty set. So the online users are the
online sets, and ``SCAN … MATCH … TYPE set`` over each node (every master
of a Cluster) finds them a slice of the keyspace per call, never blocking
Redis for more than the slice. A page's token is where the scan stopped:
the node (by the lowest slot it owns; 0 on one Redis), its cursor, and how
many of that call's users the page already took, so the next page repeats
that call and skips them. Paging through, each user online throughout is
listed (``SCAN`` returns each key present from start to end).

``DEVICE_RETENTION`` walks the users' device hashes the same way, one slice
at a time, each slice's users' old offline devices forgotten by one script
per slot; a walk of the whole keyspace starts at most every quarter of the
retention (an hour at most), as the embedded store's sweep does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from txredisapi import ConnectionError as RedisConnectionError

from heartbeat.core.errors import BadInput
from heartbeat.core.store_contract import StoreUnavailable
from heartbeat.store.memory import prune_interval
from heartbeat.store.redis.keys import user_keys
from heartbeat.store.redis.topology import Topology

log = Logger()

# Keys one SCAN call looks at, and the most calls one page makes (a short
# page, with its token, rather than a request that scans the whole keyspace).
SCAN_COUNT = 1000
MAX_SCANS = 64

_GLOB_SPECIAL = "*?[]\\"

Scan = Callable[[int, int, str, int, str], Deferred[Any]]
Kind = Literal["online", "devices"]
# The Redis type of each kind of key, for SCAN's TYPE.
TYPES: dict[Kind, str] = {"online": "set", "devices": "hash"}


def pattern(prefix: str, kind: Kind) -> str:
    """A ``MATCH`` pattern every user's ``kind`` key matches (and few other keys)."""
    escaped = "".join("\\" + c if c in _GLOB_SPECIAL else c for c in prefix)
    return "{*" + escaped + "*:" + kind


def user_of(key: str, prefix: str, cluster: bool, kind: Kind = "online") -> str | None:
    """The user whose ``kind`` key (online set, devices hash) ``key`` is, else None."""
    suffix = ":" + kind
    base = key[:-len(suffix)] if key.endswith(suffix) else None
    if base is None or not base.startswith("{"):
        return None
    inner = base[1:-1]
    if base.endswith("}") and "}" not in inner and inner.startswith(prefix):
        compat = inner
    elif "}" in base:
        compat = base[base.index("}") + 1:]
    else:
        return None
    if not compat.startswith(prefix) or len(compat) == len(prefix):
        return None
    userid = compat[len(prefix):]
    return userid if getattr(user_keys(prefix, userid, cluster), kind) == key else None


def _token(node: int, cursor: int, skip: int) -> str:
    return f"{node}.{cursor}.{skip}"


def _position(after: str | None) -> tuple[int, int, int]:
    if after is None:
        return -1, 0, 0
    parts = after.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise BadInput("after must be the next token of the previous page")
    node, cursor, skip = (int(p) for p in parts)
    return node, cursor, skip


def online_page(scan: Scan, nodes: list[int], prefix: str, cluster: bool,
                after: str | None, limit: int) -> Deferred[tuple[list[str], str | None]]:
    """Up to ``limit`` online users from where ``after`` stopped, and the next token."""
    node, cursor, skip = _position(after)
    return ensureDeferred(_page(scan, nodes, prefix, cluster, node, cursor, skip, limit))


async def _page(scan: Scan, nodes: list[int], prefix: str, cluster: bool, node: int,
                cursor: int, skip: int, limit: int) -> tuple[list[str], str | None]:
    match = pattern(prefix, "online")
    # The first node at or after the token's (a map that changed meanwhile moves on).
    left = [n for n in nodes if n >= node] if node >= 0 else list(nodes)
    if left and left[0] != node:
        cursor = skip = 0
    page: list[str] = []
    for _ in range(MAX_SCANS):
        if not left:
            return page, None
        reply = await scan(left[0], cursor, match, SCAN_COUNT, TYPES["online"])
        found = [u for u in (user_of(k, prefix, cluster) for k in reply[1]) if u is not None]
        found = found[skip:]
        room = limit - len(page)
        if len(found) > room:
            page += found[:room]
            return page, _token(left[0], cursor, skip + room)
        page += found
        skip = 0
        cursor = int(reply[0])
        if cursor == 0:
            left.pop(0)
        if len(page) == limit:
            break
    if not left:
        return page, None
    return page, _token(left[0], cursor, 0)


class DeviceRetention:
    """Forgets, in a walk of the keyspace, the devices past ``DEVICE_RETENTION``."""

    def __init__(self, topology: Topology, prefix: str, cluster: bool, retention: float,
                 clock: Any) -> None:
        self._topology = topology
        self._prefix = prefix
        self._cluster = cluster
        self._retention = retention
        self._clock = clock
        self._loop = LoopingCall(self._step)
        self._loop.clock = clock
        self._busy = False
        # When the next walk may start.
        self._next_walk = 0.0

    def start(self) -> None:
        self._loop.start(1.0, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _step(self) -> None:
        now = self._clock.seconds()
        if self._busy or now < self._next_walk or not self._topology.writable:
            return
        self._next_walk = now + prune_interval(self._retention)
        self._busy = True
        d = ensureDeferred(self._walk(now - self._retention))
        d.addErrback(_walk_failed)
        d.addBoth(self._done)

    def _done(self, _: object) -> None:
        self._busy = False

    async def _walk(self, cutoff: float) -> None:
        """One slice after another (each a bounded SCAN and one script per slot),
        never two at once, until every node is walked or the store stops."""
        match = pattern(self._prefix, "devices")
        for node in self._topology.scan_nodes():
            cursor = None
            while cursor != 0 and self._loop.running:
                cursor, keys = await self._topology.scan(node, cursor or 0, match, SCAN_COUNT,
                                                         TYPES["devices"])
                cursor = int(cursor)
                users = [u for u in (user_of(k, self._prefix, self._cluster, "devices")
                                     for k in keys) if u is not None]
                if users:
                    await self._topology.prune(users, cutoff)


def _walk_failed(failure: Failure) -> None:
    """A walk cut short by Redis going away (a failover, a restart) is expected and
    told in one line: the next walk starts over. Anything else keeps its traceback."""
    if failure.check(RedisConnectionError, StoreUnavailable):
        log.warn("forgetting old devices stopped: {why}", why=failure.getErrorMessage())
    else:
        log.failure("forgetting old devices failed", failure, level=LogLevel.warn)
