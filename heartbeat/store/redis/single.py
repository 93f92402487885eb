"""One Redis, or the master Redis Sentinel names: the single-node :class:`Topology`.

Every process holds two connections: one for commands (the scripts) and one
subscriber, subscribed to exactly the channels the hub asks for — no
patterns, so an instance only receives pings somebody on it watches. When the
subscriber comes back it subscribes again to every channel still wanted
(Redis forgot them with the connection, and txredisapi does not remember
them). Every key lives on the one server, so a ping's deadline partition and
its online count are written in the ping's own script, and one sweep call
reads every partition.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import ConnectionError as RedisConnectionError
from txredisapi import RedisProtocol

from heartbeat.core.presence import MAX_DEVICES_PER_USER, Ping, Presence
from heartbeat.core.store_contract import StoreUnavailable
from heartbeat.store.changelog import DEFAULT_RETENTION
from heartbeat.store.redis.address import RedisAddress
from heartbeat.store.redis.codec import deadline_member, from_member, ping_args
from heartbeat.store.redis.feed import RedisFeed, SingleReader, feed_keys
from heartbeat.store.redis.keys import PARTITIONS, partition_keys, user_keys
from heartbeat.store.redis.link import RedisLink, peer
from heartbeat.store.redis.lua import Script, scripts
from heartbeat.store.redis.sentinel import route_for
from heartbeat.store.redis.tls import TrustRoot
from heartbeat.store.redis.topology import Events, Outcome, Swept
from heartbeat.store.redis.tuning import REARM_CACHE, REPLY_TIMEOUT, WAIT_TIMEOUT_MS, chunks

log = Logger()

_SCRIPTS = scripts("single")


class SingleTopology:
    """Two links to one server (direct, or following the master Sentinel names)."""

    def __init__(self, reactor: Any, address: RedisAddress, prefix: str,
                 trust: TrustRoot | None, changes_retention: float = DEFAULT_RETENTION,
                 max_devices: int = MAX_DEVICES_PER_USER) -> None:
        self._reactor = reactor
        self._prefix = prefix
        # MAX_DEVICES_PER_USER, which the ping script applies.
        self._max_devices = max_devices
        # The change feed's stream, the last key of every script that records changes,
        # and its retention (ms), their last argument (lua/feed.lua).
        self._feed = feed_keys(prefix)[0]
        self._retention_ms = int(changes_retention * 1000)
        partitions = [partition_keys(prefix, n) for n in range(PARTITIONS)]
        self._sweep_keys = [deadlines for deadlines, _ in partitions] + [c for _, c in partitions]
        self._where = address.describe()
        self._events: Events | None = None
        self._commands: RedisProtocol | None = None
        self._subscriber: RedisProtocol | None = None
        # True once the subscriber holds every wanted channel again.
        self._resubscribed = False
        self._wanted: set[str] = set()
        # Subscribes asked for while the subscriber was down: fired once it
        # is back and has subscribed to everything wanted.
        self._pending: list[Deferred[None]] = []
        self._closed = False
        # Links that have been connected once: a later ready is a reconnect.
        self._connected_once: set[str] = set()
        self.reconnects = {"commands": 0, "subscriber": 0}
        # Direct, or the master Sentinel names; both links follow it.
        self._route = route_for(reactor, address, trust)
        self._command_link = RedisLink(
            self._route, address, self._commands_ready, self._commands_lost,
            reply_timeout=REPLY_TIMEOUT, clock=reactor,
        )
        self._subscriber_link = RedisLink(
            self._route, address, self._subscriber_ready, self._subscriber_lost,
            on_message=self._message, reply_timeout=REPLY_TIMEOUT, name="subscriber",
            clock=reactor,
        )
        self._route.follow(self._command_link)
        self._route.follow(self._subscriber_link)
        self.change_feed = self._change_feed()

    @property
    def available(self) -> bool:
        """Both links up: pings are stored and every wanted channel is heard."""
        return self._commands is not None and self._resubscribed

    @property
    def writable(self) -> bool:
        return self._commands is not None

    @property
    def failovers(self) -> int:
        """Times the master moved (Sentinel) and both links followed it."""
        return self._route.failovers

    @property
    def liveness_failures(self) -> dict[str, int]:
        """Per connection: times it was dropped for not answering a PING."""
        links = [self._command_link, self._subscriber_link]
        failures = {link.name: link.liveness_failures for link in links}
        if self._route.watchers:  # Sentinel: its watchers, together
            failures["sentinel"] = sum(link.liveness_failures for link in self._route.watchers)
        return failures

    def start(self, events: Events) -> None:
        self._events = events
        self._route.start()
        self._command_link.connect()
        self._subscriber_link.connect()

    def stop(self) -> Deferred[None]:
        self._closed = True
        pending, self._pending = self._pending, []
        for d in pending:
            d.errback(StoreUnavailable())
        links = (self._command_link, self._subscriber_link)
        stopping = [link.disconnect() for link in links] + [self._route.stop()]
        return gatherResults(stopping).addCallback(lambda _: None)

    def _conn(self) -> RedisProtocol:
        if self._commands is None:
            raise StoreUnavailable()
        return self._commands

    # Writes.

    def store(self, pings: list[tuple[Ping, bool]], timeout: float,
              wait_replicas: int) -> Deferred[list[Outcome]]:
        """One script call for the batch; then, if asked, one ``WAIT`` on the same connection
        (WAIT counts the replicas holding this connection's writes)."""
        conn = self._conn()
        keys: list[str] = []
        args: list[object] = [timeout, 5, "", self._max_devices]
        for ping, hides in pings:
            user = user_keys(self._prefix, ping.userid)
            deadlines, count = partition_keys(self._prefix, user.partition)
            keys += (user.key, user.devices, user.online, deadlines, count)
            args += ping_args(ping, deadline_member(ping.userid, ping.clientid), hides)
        d = _SCRIPTS.ping.run(conn, [*keys, self._feed], [*args, self._retention_ms])
        d.addCallback(self.change_feed.counted)
        if wait_replicas:
            d.addCallback(self._wait, conn, wait_replicas)
        else:
            d.addCallback(lambda results: [(result, None) for result in results])
        return d

    def _wait(self, results: list, conn: RedisProtocol, wanted: int) -> Deferred[list[Outcome]]:
        d = maybeDeferred(conn.execute_command, "WAIT", wanted, WAIT_TIMEOUT_MS)
        return d.addCallback(lambda acknowledged: [(result, acknowledged) for result in results])

    def leave(self, userid: str, clientid: str) -> Deferred[int]:
        user = user_keys(self._prefix, userid)
        deadlines, count = partition_keys(self._prefix, user.partition)
        keys = [user.key, user.devices, user.online, deadlines, count, self._feed]
        d = _SCRIPTS.leave.run(self._conn(), keys, [
            userid, clientid, deadline_member(userid, clientid), self._retention_ms])
        return d.addCallback(self.change_feed.counted_one)

    def rearm(self, devices: list[tuple[str, str]], after: float) -> Deferred[None]:
        """In chunks (Redis runs one script at a time), all sent at once."""
        conn = self._conn()
        steps = []
        for chunk in chunks(devices):
            targets = [_deadline_of(self._prefix, userid, clientid) for userid, clientid in chunk]
            keys = [key for key, _ in targets]
            steps.append(_SCRIPTS.rearm.run(conn, keys, [after, *(m for _, m in targets)]))
        return gatherResults(steps, consumeErrors=True).addCallback(lambda _: None)

    def restore(self, latest: Ping, devices: Iterable[tuple[Presence, float]]) -> Deferred[None]:
        """Each online device keeps its deadline, a wall-clock time: Redis's clock and
        the one that set it are taken to agree."""
        user = user_keys(self._prefix, latest.userid)
        args: list[object] = [latest.time, latest.status]
        for device, deadline in devices:
            assert device.clientid is not None
            args += (device.clientid, f"{device.time} {device.status}",
                     f"{deadline:.6f}" if device.online else "",
                     deadline_member(latest.userid, device.clientid))
        keys = [user.key, user.devices, user.online, *partition_keys(self._prefix, user.partition)]
        return _SCRIPTS.restore.run(self._conn(), keys, args).addCallback(lambda _: None)

    def refused(self, error: object) -> None:
        """A write refused as READONLY: the command link is on a replica, so it moves."""
        conn = self._commands
        if conn is not None and self._route.follows_master and "READONLY" in str(error):
            self._route.replica_found(peer(conn))
            self._command_link.reconnect_now()

    # Reads.

    def read(self, userids: list[str]) -> Deferred[list[Any]]:
        keys: list[str] = []
        for userid in userids:
            user = user_keys(self._prefix, userid)
            keys += (user.key, user.devices, user.online)
        return _SCRIPTS.read_many.run(self._conn(), keys)

    def _change_feed(self) -> RedisFeed:
        """The change feed its scripts record (lua/feed.lua), which counts what they record."""
        def run(script: Script, keys: Sequence[str], args: Sequence[object]) -> Deferred[Any]:
            return maybeDeferred(lambda: script.run(self._conn(), keys, args))

        return RedisFeed(
            self._prefix, self._retention_ms / 1000, self._reactor,
            SingleReader(self._prefix, _SCRIPTS, run), _SCRIPTS, run,
            lambda *command: maybeDeferred(lambda: self._conn().execute_command(*command)),
        )

    # Erasure, the control channel, scans.

    def erase(self, userid: str, message: str) -> Deferred[int]:
        """The user's devices are read first, for their deadline members (the
        script cannot spell them as the codec does); a device first seen in
        between keeps its partition entry, which the sweep drops when due."""
        d = self.read([userid])
        return d.addCallback(self._erase, userid, message)

    def _erase(self, rows: list[Any], userid: str, message: str) -> Deferred[int]:
        _, _, fields, online = rows[0]
        members = [deadline_member(userid, c) for c in dict.fromkeys([*fields[::2], *online])]
        user = user_keys(self._prefix, userid)
        keys = [user.key, user.devices, user.online, *partition_keys(self._prefix, user.partition),
                self._feed]
        d = _SCRIPTS.erase.run(self._conn(), keys,
                               [message, userid, *members, self._retention_ms])
        return d.addCallback(self.change_feed.counted_one)

    def notify(self, channel: str, message: str) -> Deferred[object]:
        return _SCRIPTS.notify.run(self._conn(), [channel], [message])

    def scan_nodes(self) -> list[int]:
        return [0]

    def scan(self, node: int, cursor: int, match: str, count: int, kind: str) -> Deferred[Any]:
        return maybeDeferred(self._conn().execute_command,
                             "SCAN", cursor, "MATCH", match, "COUNT", count, "TYPE", kind)

    def prune(self, userids: list[str], cutoff: float) -> Deferred[object]:
        keys: list[str] = []
        for userid in userids:
            user = user_keys(self._prefix, userid)
            keys += (user.devices, user.online)
        return _SCRIPTS.prune.run(self._conn(), keys, [cutoff])

    # Presence deadlines.

    def sweep(self, batch: int) -> Deferred[Swept]:
        """Reading the due entries of every partition is one call; claiming them another,
        where an entry another instance claimed first (or a ping re-armed) is left alone."""
        conn = self._conn()
        d = _SCRIPTS.due.run(conn, self._sweep_keys, [batch])
        return d.addCallback(self._claim_due, conn, batch)

    def _claim_due(self, found: list, conn: RedisProtocol, batch: int) -> Deferred[Swept] | Swept:
        online, lost = max(0, int(found[0])), int(found[1]) == 1
        entries = list(zip(found[2::3], found[3::3]))
        if not entries:
            return Swept(online, 0, False, lost)
        keys: list[str] = []
        args: list[object] = [5]
        full = [0] * PARTITIONS
        for partition, member in entries:
            full[int(partition)] += 1
            # An entry not heartbeat's is nobody's device: claimed and dropped as it is.
            device = from_member(member) or ("", "")
            user = user_keys(self._prefix, device[0])
            keys += (user.key, user.devices, user.online,
                     *partition_keys(self._prefix, int(partition)))
            args += (member, *device)
        again = any(count >= batch for count in full)
        d = _SCRIPTS.expire.run(conn, [*keys, self._feed], [*args, self._retention_ms])
        d.addCallback(self.change_feed.counted)
        return d.addCallback(
            lambda out: Swept(online, sum(int(g) for g in out[::2]), again, lost))

    # Pub/sub.

    def subscribe(self, channel: str) -> Deferred[None]:
        self._wanted.add(channel)
        conn = self._subscriber
        if conn is None:
            return self._after_resubscribe()
        d = maybeDeferred(conn.subscribe, channel)
        return d.addCallbacks(lambda _: None, self._subscribe_failed)

    def unsubscribe(self, channel: str) -> Deferred[None]:
        self._wanted.discard(channel)
        conn = self._subscriber
        if conn is None:
            return succeed(None)
        # A lost connection has no subscriptions left to undo.
        d = maybeDeferred(conn.unsubscribe, channel)
        return d.addCallbacks(lambda _: None, _connection_lost)

    def _subscribe_failed(self, failure: Failure) -> Deferred[None]:
        # The connection went while subscribing: the channel is subscribed
        # with all the others when it is back.
        failure.trap(RedisConnectionError)
        return self._after_resubscribe()

    def _after_resubscribe(self) -> Deferred[None]:
        if self._closed:
            return fail(StoreUnavailable())
        d: Deferred[None] = Deferred()
        self._pending.append(d)
        return d

    def _message(self, channel: str, text: str) -> None:
        if self._events is not None:
            self._events.message(channel, text)

    # Connection state, reported by the links.

    def _commands_ready(self, conn: RedisProtocol) -> None:
        self._commands = conn
        self._count_connect("commands")
        log.info("redis commands connected to {where}", where=peer(conn))
        self._ready()

    def _commands_lost(self, conn: RedisProtocol) -> None:
        self._commands = None
        if not self._closed:
            log.warn("redis commands lost {where}: pings get 503 until it is back", where=self._where)

    def _subscriber_ready(self, conn: RedisProtocol) -> None:
        self._subscriber = conn
        self._count_connect("subscriber")
        log.info(
            "redis subscriber connected to {where}, subscribing to {count} channels",
            where=peer(conn), count=len(self._wanted),
        )
        d = gatherResults(
            [conn.subscribe(channel).addErrback(_connection_lost) for channel in self._wanted],
            consumeErrors=True,
        )
        d.addCallbacks(
            self._resubscribed_all,
            lambda f: log.failure("redis resubscribe failed", f.value.subFailure),
            (conn,),
        )

    def _count_connect(self, link: str) -> None:
        if link in self._connected_once:
            self.reconnects[link] += 1
        self._connected_once.add(link)

    def _resubscribed_all(self, _: object, conn: RedisProtocol) -> None:
        if self._subscriber is not conn:
            return  # lost again meanwhile: the next connection starts over
        self._resubscribed = True
        pending, self._pending = self._pending, []
        for d in pending:
            d.callback(None)
        self._ready()

    def _subscriber_lost(self, conn: RedisProtocol) -> None:
        self._subscriber = None
        self._resubscribed = False
        if self._events is not None:
            self._events.bus_lost()
        if not self._closed:
            log.warn("redis subscriber lost {where}: reconnecting", where=self._where)

    def _ready(self) -> None:
        if self._events is not None:
            self._events.ready()


@lru_cache(maxsize=REARM_CACHE)
def _deadline_of(prefix: str, userid: str, clientid: str) -> tuple[str, str]:
    """A device's deadline partition and member: the same at every renewal, made once."""
    partition = user_keys(prefix, userid).partition
    return partition_keys(prefix, partition)[0], deadline_member(userid, clientid)


def _connection_lost(failure: Failure) -> None:
    """Swallow a lost connection: whatever it was doing, the next one redoes."""
    failure.trap(RedisConnectionError)
