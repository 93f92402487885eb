"""The Redis store: many instances share each user's presence and its changes.

Each user has a hash (``time``, ``status``) under ``REDIS_PREFIX + userid``,
and a pub/sub channel of the same name; their devices and online devices
are keys of the same hash slot (:mod:`~heartbeat.store.redis.keys`). Every
change is published on the channel as its event's JSON object. Every process holds two connections:
one for commands (the store-and-publish script, reads) and one subscriber,
subscribed to exactly the channels the hub asks for — no patterns, so an
instance only receives pings somebody on it watches.

Redis may vanish at any time. The store then refuses pings at once
(:class:`StoreUnavailable`, a 503) rather than queueing them; its links
reconnect with capped backoff; the subscriber subscribes again to every
channel still wanted (Redis forgot them with the connection, and txredisapi
does not remember them); then the hub is asked to ``resync``, because what
was published meanwhile is gone and only the stored state tells what changed.

Presence needs no leader. Each ping re-arms its device's deadline (Redis's
clock plus ``PRESENCE_TIMEOUT``) in a sorted set; every instance sweeps
the due deadlines once a second, and the script that removes an entry
publishes the offline change in the same atomic step, so however many
instances sweep, and whichever of them died, each transition is published
once. A sweep that cannot run (Redis away) runs when Redis is back, and
publishes what fell due meanwhile, late.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import ConnectionError as RedisConnectionError
from txredisapi import RedisProtocol

from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.presence import Ping, Presence, UserState
from heartbeat.core.store_contract import BusListener
from heartbeat.store.interface import StoreUnavailable
from heartbeat.store.redis.address import RedisAddress
from heartbeat.store.redis.keys import PARTITIONS, partition_keys, user_keys
from heartbeat.store.redis.link import RedisLink, peer
from heartbeat.store.redis.scripts import (
    DUE,
    EXPIRE_DUE,
    LEAVE,
    READ_MANY,
    RESTORE,
    STORE_AND_PUBLISH,
    Script,
    deadline_member,
    from_member,
    from_row,
    ping_args,
    relay,
)
from heartbeat.store.redis.sentinel import route_for
from heartbeat.store.redis.tls import load_trust_root

log = Logger()

# Seconds a command may wait for its reply before the connection is dropped
# (and remade): a Redis that hangs must turn into 503s, not hung requests.
REPLY_TIMEOUT = 5.0
# Seconds between sweeps of the due deadlines, and the most entries one sweep
# takes from a partition (a full one is swept again at once).
SWEEP_INTERVAL = 1.0
SWEEP_BATCH = 128
# Milliseconds a batch's WAIT gives the replicas (REDIS_WAIT_REPLICAS) to
# acknowledge it: well inside REPLY_TIMEOUT, which would drop the connection.
WAIT_TIMEOUT_MS = 1000


def queue_for_turn(reactor: Any, queue: list[tuple[Any, Deferred[Any]]], item: Any,
                   send: Callable[[], None]) -> Deferred[Any]:
    """``item``'s answer, once ``send`` has sent it with the rest of this turn's ``queue``.

    The first item of a turn schedules ``send`` for the end of the turn, so
    one command carries every ping (or read) the turn brought.
    """
    d: Deferred[Any] = Deferred()
    if not queue:
        reactor.callLater(0, send)
    queue.append((item, d))
    return d


class Replicas:
    """``REDIS_WAIT_REPLICAS``: whether a ``WAIT`` counted enough replicas.

    Logged when that changes, not for every batch, as a short count lasts
    until a replica is back.
    """

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self._short = False

    def enough(self, acknowledged: object) -> bool:
        short = not (isinstance(acknowledged, (int, str)) and int(acknowledged) >= self.wanted)
        if short != self._short:
            self._short = short
            if short:
                log.warn("redis: {acknowledged} of {wanted} replicas acknowledged (REDIS_WAIT_REPLICAS):"
                         " pings get 503", acknowledged=acknowledged, wanted=self.wanted)
            else:
                log.info("redis: replicas acknowledge pings again")
        return not short


class RedisStore(Service):
    """The :class:`~heartbeat.store.Store` of a scaled-out deployment.

    A service so that connecting starts with the application, not when
    ``makeService`` builds it; ``close`` (called last by the parent service
    on shutdown) drops both connections.
    """

    listener: BusListener | None = None
    kind = "redis"

    def __init__(self, address: RedisAddress, prefix: str, reactor: Any,
                 timeout: float, ca_file: str | None = None, wait_replicas: int = 0,
                 hiding: Hiding = Hiding()) -> None:
        self._reactor = reactor
        self._prefix = prefix
        self._timeout = timeout
        self._hiding = hiding
        partitions = [partition_keys(prefix, n) for n in range(PARTITIONS)]
        self._sweep_keys = [deadlines for deadlines, _ in partitions] + [c for _, c in partitions]
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = reactor
        self._sweeping = False
        self._online_users: int | None = None
        self.offline_transitions = 0
        self._where = address.describe()
        self._wait_replicas = wait_replicas
        self._replicas = Replicas(wait_replicas)
        self._commands: RedisProtocol | None = None
        self._subscriber: RedisProtocol | None = None
        # True once the subscriber holds every wanted channel again.
        self._resubscribed = False
        self._wanted: set[str] = set()
        # Subscribes asked for while the subscriber was down: fired once it
        # is back and has subscribed to everything wanted.
        self._pending: list[Deferred[None]] = []
        # The pings and gets of this reactor turn, each sent together at its end.
        self._writes: list[tuple[Ping, Deferred[None]]] = []
        self._reads: list[tuple[list[str], Deferred[dict[str, UserState | None]]]] = []
        self._closed = False
        # Links that have been connected once: a later ready is a reconnect.
        self._connected_once: set[str] = set()
        self.reconnects = {"commands": 0, "subscriber": 0}
        # Direct, or the master Sentinel names; both links follow it.
        self._route = route_for(reactor, address, load_trust_root(ca_file) if ca_file else None)
        self._command_link = RedisLink(
            self._route, address, self._commands_ready, self._commands_lost,
            reply_timeout=REPLY_TIMEOUT,
        )
        self._subscriber_link = RedisLink(
            self._route, address, self._subscriber_ready, self._subscriber_lost,
            on_message=self._message, reply_timeout=REPLY_TIMEOUT, name="subscriber",
        )
        self._route.follow(self._command_link)
        self._route.follow(self._subscriber_link)

    @property
    def available(self) -> bool:
        """Both links up: pings are stored and every wanted channel is heard."""
        return self._commands is not None and self._resubscribed

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

    def startService(self) -> None:
        super().startService()
        self._route.start()
        self._command_link.connect(self._reactor)
        self._subscriber_link.connect(self._reactor)
        self._sweeper.start(SWEEP_INTERVAL, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.close()

    def _key(self, userid: str) -> str:
        return self._prefix + userid

    # The Store protocol.

    def ping(self, ping: Ping) -> Deferred[None]:
        """Store and publish ``ping`` with every other ping of this reactor turn.

        Under load many connections' pings arrive in one turn; one script
        call for all of them spares each its own command, reply and chain
        of txredisapi Deferreds. Each ping is still stored and published
        by one atomic script, in the order the pings came.
        """
        if self._commands is None:
            return fail(StoreUnavailable())
        return queue_for_turn(self._reactor, self._writes, ping, self._write_batch)

    def online_users(self) -> int | None:
        """As the last sweep counted them (None before the first)."""
        return self._online_users

    def leave(self, userid: str, clientid: str) -> Deferred[None]:
        if self._commands is None:
            return fail(StoreUnavailable())
        keys = user_keys(self._prefix, userid).for_deadline(self._prefix)
        args = [deadline_member(userid, clientid), userid, clientid]
        d = LEAVE.run(self._commands, keys, args)
        d.addCallbacks(self._count_offline, self._store_failed)
        return d.addCallback(lambda _: None)

    def get(self, userids: Iterable[str]) -> Deferred[dict[str, UserState | None]]:
        """The stored states, read with every other ``get`` of this reactor turn.

        A burst of streams opening (clients reconnecting after a restart)
        asks for thousands of users within a few turns; one script call per
        turn instead of one per stream is most of the burst's Redis cost.
        """
        users = list(dict.fromkeys(userids))
        if not users:
            return succeed({})
        if self._commands is None:
            return fail(StoreUnavailable())
        return queue_for_turn(self._reactor, self._reads, users, self._read_batch)

    def restore(self, latest: Ping, devices: Iterable[tuple[Presence, float]]) -> Deferred[None]:
        """Put back a user another store kept, publishing nothing (as ``MemoryStore.restore``).

        Each online device keeps its deadline, a wall-clock time: Redis's
        clock and the one that set it are taken to agree.
        """
        if self._commands is None:
            return fail(StoreUnavailable())
        user = user_keys(self._prefix, latest.userid)
        args: list[object] = [latest.time, latest.status]
        for device, deadline in devices:
            assert device.clientid is not None
            args += (device.clientid, f"{device.time} {device.status}",
                     f"{deadline:.6f}" if device.online else "",
                     deadline_member(latest.userid, device.clientid))
        keys = [user.key, user.devices, user.online, *partition_keys(self._prefix, user.partition)]
        d = RESTORE.run(self._commands, keys, args)
        return d.addCallbacks(lambda _: None, self._store_failed)

    def _write_batch(self) -> None:
        writes, self._writes = self._writes, []
        keys: list[str] = []
        args: list[object] = [self._timeout]
        for ping, _ in writes:
            user = user_keys(self._prefix, ping.userid)
            deadlines, count = partition_keys(self._prefix, user.partition)
            keys += (user.key, user.devices, user.online, deadlines, count)
            args += ping_args(ping, self._hiding.hides(ping.status))
        answer = self._answer_writes
        if self._wait_replicas:
            answer = partial(self._wait_then_answer, self._commands)
        self._run(STORE_AND_PUBLISH, keys, args, writes, answer)

    def _wait_then_answer(self, conn: RedisProtocol, results: list,
                          writes: list[tuple[Ping, Deferred[None]]]) -> None:
        """Answer the batch once ``REDIS_WAIT_REPLICAS`` replicas acknowledged it.

        On the connection that wrote it: WAIT counts the replicas holding
        this connection's writes, so on any other it would count nothing.
        """
        d = maybeDeferred(conn.execute_command, "WAIT", self._wait_replicas, WAIT_TIMEOUT_MS)
        d.addCallbacks(self._replicated, self._fail_batch,
                       callbackArgs=(results, writes), errbackArgs=(writes,))

    def _replicated(self, acknowledged: object, results: list,
                    writes: list[tuple[Ping, Deferred[None]]]) -> None:
        if not self._replicas.enough(acknowledged):
            for _, d in writes:
                d.errback(StoreUnavailable())
        else:
            self._answer_writes(results, writes)

    def _answer_writes(self, results: list, writes: list[tuple[Ping, Deferred[None]]]) -> None:
        for result, (ping, d) in zip(results, writes):
            if result == 1 or result == 2:  # 2: a ping that hides took the user offline
                self._count_offline(result - 1)
                d.callback(None)
            else:  # e.g. WRONGTYPE: the user's key holds something else
                log.error("redis refused to store {ping}: {error}", ping=ping, error=result)
                self._check_replica(result)
                d.errback(StoreUnavailable())

    def _read_batch(self) -> None:
        reads, self._reads = self._reads, []
        # Every user the turn's gets name, once each, in the order first named.
        users = list(dict.fromkeys(userid for wanted, _ in reads for userid in wanted))
        keys: list[str] = []
        for userid in users:
            user = user_keys(self._prefix, userid)
            keys += (user.key, user.devices, user.online)
        self._run(READ_MANY, keys, [], reads, partial(self._answer_reads, users))

    def _answer_reads(
        self, users: list[str], rows: list, reads: list[tuple[list[str], Deferred]]
    ) -> None:
        states = {userid: from_row(userid, row) for userid, row in zip(users, rows)}
        for wanted, d in reads:
            d.callback({userid: states[userid] for userid in wanted})

    def _run(self, script: Script, keys: list[str], args: list[object],
             waiting: list[tuple[Any, Deferred[Any]]],
             answer: Callable[[Any, list[tuple[Any, Deferred[Any]]]], None]) -> None:
        """One script call for a turn's batch; every caller hears of a failure."""
        conn = self._commands
        batch = fail(StoreUnavailable()) if conn is None else script.run(conn, keys, args)
        batch.addCallbacks(answer, self._fail_batch, callbackArgs=(waiting,),
                           errbackArgs=(waiting,))

    def _fail_batch(self, failure: Failure, waiting: list[tuple[Any, Deferred[Any]]]) -> None:
        self._store_failed(failure)
        for _, d in waiting:
            d.errback(StoreUnavailable())

    def _store_failed(self, failure: Failure) -> Failure:
        # A lost connection was logged as it went; anything else is logged here.
        if not failure.check(StoreUnavailable, RedisConnectionError):
            log.failure("redis command failed", failure)
            self._check_replica(failure.value)
        return Failure(StoreUnavailable())

    # Presence deadlines.

    def _sweep(self) -> None:
        """Take offline every device whose deadline has passed, with the other instances.

        Reading the due entries is one call; claiming them is another, where
        an entry another instance claimed first (or a ping re-armed) is left
        alone. Sweeps never overlap; a full batch is followed by another at once.
        """
        conn = self._commands
        if conn is None or self._sweeping:
            return
        self._sweeping = True
        d = DUE.run(conn, self._sweep_keys, [SWEEP_BATCH])
        d.addCallback(self._claim_due, conn)
        d.addErrback(self._store_failed)
        d.addBoth(self._swept)

    def _claim_due(self, found: list, conn: RedisProtocol) -> Deferred[bool] | bool:
        self._online_users = max(0, int(found[0]))
        entries = list(zip(found[1::2], found[2::2]))
        keys: list[str] = []
        args: list[str] = []
        full = [0] * PARTITIONS
        for partition, member in entries:
            full[partition] += 1
            device = from_member(member)
            if device is None:  # not heartbeat's: claimed and dropped as it is
                device = ("", "")
            user = user_keys(self._prefix, device[0])
            keys += (*partition_keys(self._prefix, partition), user.key, user.devices, user.online)
            args += (member, *device)
        again = any(count >= SWEEP_BATCH for count in full)
        if not entries:
            return False
        d = EXPIRE_DUE.run(conn, keys, args)
        return d.addCallback(self._count_offline).addCallback(lambda _: again)

    def _count_offline(self, gone: int) -> int:
        self.offline_transitions += int(gone)
        return gone

    def _swept(self, again: object) -> None:
        self._sweeping = False
        if again is True:
            self._reactor.callLater(0, self._sweep)

    def _check_replica(self, error: object) -> None:
        """A write refused as READONLY: the command link is on a replica, so it moves."""
        conn = self._commands
        if conn is not None and self._route.follows_master and "READONLY" in str(error):
            self._route.replica_found(peer(conn))
            self._command_link.reconnect_now()

    def subscribe(self, userid: str) -> Deferred[None]:
        self._wanted.add(userid)
        conn = self._subscriber
        if conn is None:
            return self._after_resubscribe()
        d = maybeDeferred(conn.subscribe, self._key(userid))
        return d.addCallbacks(lambda _: None, self._subscribe_failed)

    def unsubscribe(self, userid: str) -> Deferred[None]:
        self._wanted.discard(userid)
        conn = self._subscriber
        if conn is None:
            return succeed(None)
        # A lost connection has no subscriptions left to undo.
        d = maybeDeferred(conn.unsubscribe, self._key(userid))
        return d.addCallbacks(lambda _: None, _connection_lost)

    def close(self) -> Deferred[None]:
        self._closed = True
        if self._sweeper.running:
            self._sweeper.stop()
        pending, self._pending = self._pending, []
        for d in pending:
            d.errback(StoreUnavailable())
        links = (self._command_link, self._subscriber_link)
        stopping = [link.disconnect() for link in links] + [self._route.stop()]
        return gatherResults(stopping).addCallback(lambda _: None)

    # Failures.

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

    # Connection state, reported by the links.

    def _commands_ready(self, conn: RedisProtocol) -> None:
        self._commands = conn
        self._count_connect("commands")
        log.info("redis commands connected to {where}", where=peer(conn))
        self._resync()

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
            [
                conn.subscribe(self._key(userid)).addErrback(_connection_lost)
                for userid in self._wanted
            ],
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
        self._resync()

    def _subscriber_lost(self, conn: RedisProtocol) -> None:
        self._subscriber = None
        self._resubscribed = False
        if self.listener is not None:
            self.listener.bus_lost()
        if not self._closed:
            log.warn("redis subscriber lost {where}: reconnecting", where=self._where)

    def _resync(self) -> None:
        """Once both links are up, have the hub re-read what it may have missed.

        Called on every (re)connection of either link: the subscriber missed
        whatever was published while it was away, and a stream opened while
        the command link was away could not read its stored pings.
        """
        if self.available and self.listener is not None:
            self.listener.resync()

    def _message(self, channel: str, text: str) -> None:
        relay(self.listener, self._prefix, channel, text)


def _connection_lost(failure: Failure) -> None:
    """Swallow a lost connection: whatever it was doing, the next one redoes."""
    failure.trap(RedisConnectionError)
