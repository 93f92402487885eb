"""The Redis store: many instances share each user's presence and its changes.

Each user has a hash (``time``, ``status``) under ``REDIS_PREFIX + userid``,
and a pub/sub channel of the same name; their devices and online devices
are keys of the same hash slot (:mod:`~heartbeat.store.redis.keys`). Every
change is published on the channel as its event's JSON object
(:mod:`~heartbeat.store.redis.codec`), by the Lua script that made it
(:mod:`~heartbeat.store.redis.lua`). Where the keys live — one Redis, the
master Sentinel names, or a Cluster — is the :class:`Topology`'s business;
this class is the same over all of them.

Redis may vanish at any time. The store then refuses pings at once
(:class:`StoreUnavailable`, a 503) rather than queueing them; its links
reconnect with capped backoff; then the hub is asked to ``resync``, because
what was published meanwhile is gone and only the stored state tells what
changed.

Presence needs no leader. Each ping re-arms its device's deadline (Redis's
clock plus ``PRESENCE_TIMEOUT``); every instance sweeps the due deadlines
once a second, and the script that claims an entry publishes the offline
change in the same atomic step, so however many instances sweep, and
whichever of them died, each transition is published once. A sweep that
cannot run (Redis away) runs when Redis is back, and publishes what fell
due meanwhile, late.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import ConnectionError as RedisConnectionError

from heartbeat.core.errors import Refused
from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.presence import MAX_DEVICES_PER_USER, Ping, Presence, UserState
from heartbeat.core.store_contract import BusListener, StoreUnavailable
from heartbeat.store.changelog import DEFAULT_RETENTION
from heartbeat.store.redis.address import RedisAddress
from heartbeat.store.redis.batching import Waiting, queue_for_turn
from heartbeat.store.redis.bus import relay
from heartbeat.store.redis.codec import (
    disconnect_message,
    erased_message,
    from_control,
    from_row,
)
from heartbeat.store.redis.feed import RedisFeed
from heartbeat.store.redis.keys import control_channel
from heartbeat.store.redis.lua import CAME_ONLINE, HIDDEN, STORED, WENT_OFFLINE
from heartbeat.store.redis.replicas import Replicas
from heartbeat.store.redis.scans import DeviceRetention, online_page
from heartbeat.store.redis.tls import load_trust_root
from heartbeat.store.redis.topology import Outcome, Swept, Topology
from heartbeat.store.redis.tuning import READ_CHUNK, SWEEP_BATCH, SWEEP_INTERVAL

log = Logger()

# What a topology answers for a ping that was stored (or hid).
_STORED = frozenset((STORED, CAME_ONLINE, HIDDEN, WENT_OFFLINE))


def topology_for(reactor: Any, address: RedisAddress, prefix: str,
                 ca_file: str | None, changes_retention: float = DEFAULT_RETENTION,
                 max_devices: int = MAX_DEVICES_PER_USER) -> Topology:
    """The topology ``REDIS`` names: a Cluster, or one server (direct or through Sentinel)."""
    trust = load_trust_root(ca_file) if ca_file else None
    if address.kind == "cluster":
        from heartbeat.store.redis.cluster_topology import ClusterTopology

        return ClusterTopology(reactor, address, prefix, trust, changes_retention, max_devices)
    from heartbeat.store.redis.single import SingleTopology

    return SingleTopology(reactor, address, prefix, trust, changes_retention, max_devices)


class RedisStore(Service):
    """The :class:`~heartbeat.store.Store` of a scaled-out deployment.

    A service so that connecting starts with the application, not when
    ``makeService`` builds it; ``close`` (called last by the parent service
    on shutdown) drops every connection. ``topology`` replaces the one
    ``address`` names (tests).
    """

    listener: BusListener | None = None
    kind = "redis"
    # Presence lives in Redis: nothing to load (Store.loaded).
    loaded = True

    def __init__(self, address: RedisAddress | None, prefix: str, reactor: Any,
                 timeout: float, ca_file: str | None = None, wait_replicas: int = 0,
                 hiding: Hiding = Hiding(), topology: Topology | None = None,
                 retention: float | None = None, *,
                 changes_retention: float = DEFAULT_RETENTION,
                 max_devices: int = MAX_DEVICES_PER_USER) -> None:
        if topology is None:
            assert address is not None
            topology = topology_for(reactor, address, prefix, ca_file, changes_retention,
                                    max_devices)
        self._topology = topology
        self._cluster = address is not None and address.kind == "cluster"
        self._control = control_channel(prefix)
        # DEVICE_RETENTION: None keeps devices for ever (tests that do not prune).
        self._retention = None if retention is None else DeviceRetention(
            topology, prefix, self._cluster, retention, reactor)
        # The change feed (SPEC §8); a stand-in topology (tests) may keep none.
        self.change_feed: RedisFeed | None = getattr(topology, "change_feed", None)
        self.reconnects = topology.reconnects
        self._reactor = reactor
        self._prefix = prefix
        self._timeout = timeout
        self._hiding = hiding
        self._wait_replicas = wait_replicas
        self._replicas = Replicas(wait_replicas)
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = reactor
        self._sweeping = False
        self._online_users: int | None = None
        self.offline_transitions = 0
        self._last_error: str | None = None
        # The pings and gets of this reactor turn, each sent together at its end.
        self._writes: Waiting = []
        self._reads: Waiting = []
        self._closed = False

    # Health and metrics.

    @property
    def available(self) -> bool:
        return self._topology.available

    @property
    def failovers(self) -> int:
        """Times the master (Sentinel) or the slot map (Cluster) moved and the links followed."""
        return self._topology.failovers

    @property
    def liveness_failures(self) -> dict[str, int]:
        """Per connection: times it was dropped for not answering a PING."""
        return self._topology.liveness_failures

    @property
    def changes_recorded(self) -> int:
        """Changes this instance's scripts recorded in the feed (none without one)."""
        return 0 if self.change_feed is None else self.change_feed.changes_recorded

    def online_users(self) -> int | None:
        """As the last sweep counted them (None before the first)."""
        return self._online_users

    def startService(self) -> None:
        super().startService()
        self._topology.start(self)
        # Held for the store's life (and again after each reconnect).
        self._topology.subscribe(self._control).addErrback(lambda _: None)
        self._sweeper.start(SWEEP_INTERVAL, now=False)
        if self._retention is not None:
            self._retention.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.close()

    def close(self) -> Deferred[None]:
        self._closed = True
        if self._sweeper.running:
            self._sweeper.stop()
        if self._retention is not None:
            self._retention.stop()
        if self.change_feed is not None:
            self.change_feed.stop()
        return self._topology.stop()

    # The Store protocol.

    def ping(self, ping: Ping) -> Deferred[None]:
        """Store and publish ``ping`` with every other ping of this reactor turn.

        Under load many connections' pings arrive in one turn; one script
        call for all of them (per node) spares each its own command, reply
        and chain of txredisapi Deferreds. Each ping is still stored and
        published by one atomic step, in the order the pings came.
        """
        if not self._topology.writable:
            return fail(StoreUnavailable())
        return queue_for_turn(self._reactor, self._writes, ping, self._write_batch)

    def leave(self, userid: str, clientid: str) -> Deferred[None]:
        if not self._topology.writable:
            return fail(StoreUnavailable())
        d = maybeDeferred(self._topology.leave, userid, clientid)
        return d.addCallbacks(self._left, self._failed)

    def rearm(self, devices: Sequence[tuple[str, str]], after: float) -> Deferred[None]:
        """Presence streams' deadlines: the holder already sends one call per turn."""
        if not self._topology.writable:
            return fail(StoreUnavailable())
        d = maybeDeferred(self._topology.rearm, list(devices), after)
        return d.addErrback(self._failed)

    def get(self, userids: Iterable[str]) -> Deferred[dict[str, UserState | None]]:
        """The stored states, read with every other ``get`` of this reactor turn.

        A burst of streams opening (clients reconnecting after a restart)
        asks for thousands of users within a few turns; one script call per
        turn (in chunks of ``READ_CHUNK`` users) instead of one per stream
        is most of the burst's Redis cost.
        """
        users = list(dict.fromkeys(userids))
        if not users:
            return succeed({})
        if not self._topology.writable:
            return fail(StoreUnavailable())
        return queue_for_turn(self._reactor, self._reads, users, self._read_batch)

    def restore(self, latest: Ping, devices: Iterable[tuple[Presence, float]]) -> Deferred[None]:
        """Put back a user another store kept, publishing nothing (as ``MemoryStore.restore``)."""
        if not self._topology.writable:
            return fail(StoreUnavailable())
        d = maybeDeferred(self._topology.restore, latest, devices)
        return d.addErrback(self._failed)

    def erase(self, userid: str) -> Deferred[None]:
        if not self._topology.writable:
            return fail(StoreUnavailable())
        d = maybeDeferred(self._topology.erase, userid, erased_message(userid))
        return d.addCallbacks(lambda _: None, self._failed)

    def disconnect(self, userid: str) -> Deferred[None]:
        """Through the control channel, which every instance (this one too) hears."""
        if not self._topology.writable:
            return fail(StoreUnavailable())
        d = maybeDeferred(self._topology.notify, self._control, disconnect_message(userid))
        return d.addCallbacks(lambda _: None, self._failed)

    def online_page(self, after: str | None, limit: int) -> Deferred[tuple[list[str], str | None]]:
        if not self._topology.writable:
            return fail(StoreUnavailable())
        topology = self._topology
        d = online_page(topology.scan, topology.scan_nodes(), self._prefix,
                        self._cluster, after, limit)
        return d.addErrback(self._failed_unless_refused)

    def _failed_unless_refused(self, failure: Failure) -> Failure:
        return failure if failure.check(Refused) else self._failed(failure)

    def subscribe(self, userid: str) -> Deferred[None]:
        return self._topology.subscribe(self._prefix + userid)

    def unsubscribe(self, userid: str) -> Deferred[None]:
        return self._topology.unsubscribe(self._prefix + userid)

    # Batches.

    def _write_batch(self) -> None:
        writes, self._writes = self._writes, []
        pings = [(ping, self._hiding.hides(ping.status)) for ping, _ in writes]
        d = maybeDeferred(self._topology.store, pings, self._timeout, self._wait_replicas)
        d.addCallbacks(self._answer_writes, self._fail_batch, callbackArgs=(writes,),
                       errbackArgs=(writes,))

    def _answer_writes(self, outcomes: list[Outcome], writes: Waiting) -> None:
        stored = False
        for (result, acknowledged), (ping, d) in zip(outcomes, writes):
            if isinstance(result, Failure):
                self._failed(result)
                d.errback(StoreUnavailable())
            elif result not in _STORED:  # e.g. WRONGTYPE: the user's key holds something else
                log.error("redis refused to store {ping}: {error}", ping=ping, error=result)
                self._topology.refused(result)
                d.errback(StoreUnavailable())
            elif acknowledged is not None and not self._replicas.enough(acknowledged):
                d.errback(StoreUnavailable())
            else:
                stored = True
                if result == WENT_OFFLINE:  # a ping that hides took the user offline
                    self.offline_transitions += 1
                d.callback(None)
        if stored:
            self._last_error = None

    def _read_batch(self) -> None:
        reads, self._reads = self._reads, []
        # Every user the turn's gets name, once each, in the order first named.
        users = list(dict.fromkeys(userid for wanted, _ in reads for userid in wanted))
        chunks = [users[i:i + READ_CHUNK] for i in range(0, len(users), READ_CHUNK)]
        d = gatherResults([maybeDeferred(self._topology.read, chunk) for chunk in chunks],
                          consumeErrors=True)
        d.addCallbacks(self._answer_reads, self._fail_batch, callbackArgs=(users, reads),
                       errbackArgs=(reads,))

    def _answer_reads(self, rows: list[list], users: list[str], reads: Waiting) -> None:
        flat = (row for chunk in rows for row in chunk)
        states = {userid: from_row(userid, row) for userid, row in zip(users, flat)}
        for wanted, d in reads:
            d.callback({userid: states[userid] for userid in wanted})

    def _left(self, gone: object) -> None:
        if gone == 1:
            self.offline_transitions += 1

    # Failures.

    def _fail_batch(self, failure: Failure, waiting: Waiting) -> None:
        self._failed(failure)
        for _, d in waiting:
            if not d.called:
                d.errback(StoreUnavailable())

    def _failed(self, failure: Failure) -> Failure:
        """Logged once per kind of error until a batch succeeds (a failover meets the
        same error for seconds); a lost connection was logged as it went."""
        if isinstance(failure.value, FirstError):
            failure = failure.value.subFailure
        why = failure.getErrorMessage()
        if not failure.check(StoreUnavailable, RedisConnectionError):
            self._topology.refused(why)
            if why != self._last_error:
                self._last_error = why
                log.warn("redis command failed: {why}", why=why)
        return Failure(StoreUnavailable())

    # Presence deadlines.

    def _sweep(self) -> None:
        """Take offline every device whose deadline passed; sweeps never overlap, and
        a full batch is followed by another at once."""
        if self._sweeping or not self._topology.writable:
            return
        self._sweeping = True
        d = maybeDeferred(self._topology.sweep, SWEEP_BATCH)
        d.addCallback(self._swept_now)
        d.addErrback(self._failed)
        d.addBoth(self._swept)

    def _swept_now(self, swept: Swept) -> bool:
        self._online_users = max(0, swept.online)
        self.offline_transitions += swept.gone
        if swept.lost and self.listener is not None:
            # A flush with no reconnect: nothing else would tell the streams (SPEC §4).
            self.listener.resync()
        return swept.again

    def _swept(self, again: object) -> None:
        self._sweeping = False
        if again is True and not self._closed:
            self._reactor.callLater(0, self._sweep)

    # What the topology tells (Events).

    def message(self, channel: str, text: str) -> None:
        if channel == self._control:
            userid = from_control(text)
            if userid is not None and self.listener is not None:
                self.listener.disconnect(userid)
            return
        relay(self.listener, self._prefix, channel, text, self.change_feed)

    def bus_lost(self) -> None:
        if self.listener is not None:
            self.listener.bus_lost()

    def ready(self) -> None:
        """Once every link is up, have the hub re-read what it may have missed.

        Called on every (re)connection: the subscriber missed whatever was
        published while it was away, and a stream opened while the command
        link was away could not read its stored pings.
        """
        if self.available and self.listener is not None:
            self.listener.resync()
