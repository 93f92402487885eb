"""A Redis Cluster (``redis+cluster://``): the :class:`Topology` over many shards.

A Lua script in a Cluster may only touch keys of one slot. A user's keys
share one (:mod:`~heartbeat.store.redis.keys`), so storing a ping and
publishing it (``SPUBLISH``: the message stays in the user's shard) is still
one atomic script. The deadline partitions cannot share it: each is its own
slot, so that the sweep is spread over the nodes. So a device's deadline
lives twice:

- the **truth** in the user's slot, ``{…}:deadlines`` (device → deadline):
  the script that takes a device offline removes it there and publishes in
  the same step, so however many instances sweep, each transition is
  published once (SPEC §3);
- an **index entry** in the partition (``[user, device]`` → a time), only
  telling the sweep when to look.

A device's first ping (one with no deadline in the truth yet) arms the index
(``arm.lua``, on the partition's node), then stores (``ping.lua``, on the
user's node); it is ``200`` only when both did. Dying in between leaves an
entry with nothing behind it, which the sweep drops. An entry is armed
``PRESENCE_TIMEOUT`` ahead and ``ping.lua`` refuses a ping armed more than
half of that ago, so the sweep can only find an entry due once the ping
behind it was stored or refused. The sweep then asks the user's slot
(``expire.lua``): a device due goes offline (once: its deadline is removed
in that step); one re-armed since says its deadline, and the index entry is
moved to it; one gone drops the entry — each only if no ping re-armed the
entry meanwhile (``reindex.lua`` compares the time it read).

So the index always holds an entry no later than any deadline the truth
holds (or a sweep is about to move it there), and a ping of a device that
already has a deadline needs no arming: it is stored at once, every user
slot's pings of a batch in one script call, all sent together, so a batch
costs one round trip per node. ``ping.lua`` itself tells which pings those
are: the others come back ``NEEDS_ARM`` having stored nothing, and take the
way above. A user's pings still in flight hold back that user's pings of
later batches, so that they are stored in the order they came.

The online-user count per partition is kept beside the index, adjusted
after the user's step reports the change: an instance dying between the two
leaves it off by one (it is a gauge, floored at 0).

The change feed is recorded in the same steps, in a stream of the user's
slot (``feed.slot_streams``): each slot has its own, read together as one
feed by ``feed.ClusterReader``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from heartbeat.core.presence import MAX_DEVICES_PER_USER, Ping, Presence
from heartbeat.core.store_contract import StoreUnavailable
from heartbeat.store.changelog import DEFAULT_RETENTION
from heartbeat.store.redis.address import RedisAddress
from heartbeat.store.redis.cluster import Cluster, ShardedSubscriber
from heartbeat.store.redis.codec import deadline_member, from_member, ping_args
from heartbeat.store.redis.feed import ClusterReader, RedisFeed, slot_streams
from heartbeat.store.redis.keys import (
    CLUSTER_SLOTS,
    PARTITIONS,
    UserKeys,
    build_slot_tags,
    partition_keys,
    slot,
    user_keys,
)
from heartbeat.store.redis.link import RedisLink
from heartbeat.store.redis.lua import CAME_ONLINE, NEEDS_ARM, WENT_OFFLINE, Script, scripts
from heartbeat.store.redis.tls import TrustRoot
from heartbeat.store.redis.topology import Events, Outcome, Swept
from heartbeat.store.redis.tuning import REARM_CACHE, REPLY_TIMEOUT, WAIT_TIMEOUT_MS

log = Logger()

_SCRIPTS = scripts("cluster")


def _by(items: Iterable[Any], key: Callable[[Any], int]) -> dict[int, list[Any]]:
    groups: dict[int, list[Any]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return groups


def _user_slot_keys(user: UserKeys) -> list[str]:
    """The keys of ping.lua, leave.lua and expire.lua for a user (no count: another slot;
    the feed's stream of the slot follows the last user's)."""
    return [user.key, user.devices, user.online, user.deadlines]


class ClusterTopology:
    """A command link per master, one sharded subscriber per node, commands routed by slot."""

    def __init__(self, reactor: Any, address: RedisAddress, prefix: str,
                 trust: TrustRoot | None, changes_retention: float = DEFAULT_RETENTION,
                 max_devices: int = MAX_DEVICES_PER_USER) -> None:
        self._reactor = reactor
        self._prefix = prefix
        # MAX_DEVICES_PER_USER, which the ping script applies.
        self._max_devices = max_devices
        build_slot_tags()
        # The change feed's stream of each user slot, the last key of every script that
        # records changes, and its retention (ms), their last argument (lua/feed.lua).
        self._feeds = slot_streams(prefix)
        self._retention_ms = int(changes_retention * 1000)
        self._events: Events | None = None
        self._cluster = Cluster(reactor, address, trust, REPLY_TIMEOUT, self._map_changed,
                                self._commands_ready, self._commands_lost)
        self._subscriber = ShardedSubscriber(reactor, self._cluster, address, trust,
                                             self._message, self._bus_lost, self._ready)
        self.reconnects = {"commands": 0, "subscriber": 0}
        self._was_ready = False
        # Per user, fired once their last batch in flight is stored (or failed).
        self._flying: dict[str, Deferred[None]] = {}
        self.change_feed = self._change_feed()

    # Health.

    @property
    def available(self) -> bool:
        """Every slot's master is reachable, and no watched channel is lost (being moved)."""
        return self._cluster.complete and self._subscriber.caught_up

    @property
    def writable(self) -> bool:
        """Always worth trying: a node that is down fails only what goes to it (at once:
        the cluster never queues), so a master's failover costs 503s to the users of its
        slots and of the partitions it holds, not to everyone."""
        return True

    @property
    def failovers(self) -> int:
        """Times the slot map changed (a failover, a reshard) and the links followed."""
        return self._cluster.failovers

    @property
    def liveness_failures(self) -> dict[str, int]:
        links: list[RedisLink] = self._cluster.links + self._subscriber.links
        return {link.name: link.liveness_failures for link in links}

    def start(self, events: Events) -> None:
        self._events = events
        self._cluster.start()

    def stop(self) -> Deferred[None]:
        stopping = [self._subscriber.stop(), self._cluster.stop()]
        return gatherResults(stopping).addCallback(lambda _: None)

    def _users(self, userid: str) -> UserKeys:
        return user_keys(self._prefix, userid, cluster=True)

    def _run(self, script: Script, key: str, keys: list[str], args: list[object]) -> Deferred[Any]:
        """``script`` on the master of ``key``'s slot (``keys`` must all be in it)."""
        return script.run(self._cluster.commands(slot(key)), keys, args)

    def _run_all(self, script: Script, calls: list[tuple[int, list[str], list[object]]]
                 ) -> Deferred[list[Any]]:
        """``script`` once per (slot, keys, args), on each slot's master: a reply or a Failure each."""
        return self._cluster.run_all(script, calls)

    # Writes.

    def store(self, pings: list[tuple[Ping, bool]], timeout: float,
              wait_replicas: int) -> Deferred[list[Outcome]]:
        """Each user slot's pings in one ping.lua, all sent at once: one round trip per node.

        A ping whose device has no deadline yet (``NEEDS_ARM``) is stored
        nothing; its index entry is armed, then it is sent again (see the
        module). The pings of a user still in flight from an earlier batch
        wait for it, so that a user's pings are stored in the order they came.
        """
        outcomes: list[Outcome | None] = [None] * len(pings)
        numbered = list(enumerate(pings))
        free = [n for n in numbered if n[1][0].userid not in self._flying]
        held = [n for n in numbered if n[1][0].userid in self._flying]
        steps = []
        if free:
            steps.append(self._store_round([(free, "")], timeout, wait_replicas, outcomes))
        if held:
            before = {self._flying[ping.userid] for _, (ping, _) in held}
            waited = gatherResults(list(before), consumeErrors=True)
            steps.append(waited.addBoth(lambda _: self._store_round(
                [(held, "")], timeout, wait_replicas, outcomes)))
        done = gatherResults(steps, consumeErrors=True)
        for userid in {ping.userid for _, (ping, _) in numbered}:
            self._fly(userid, done)
        return done.addCallback(lambda _: [o if o is not None else (None, None) for o in outcomes])

    def _fly(self, userid: str, d: Deferred[Any]) -> None:
        """``d`` is ``userid``'s last store in flight until it fires."""
        done: Deferred[None] = Deferred()
        self._flying[userid] = done

        def landed(result: object) -> object:
            if self._flying.get(userid) is done:
                del self._flying[userid]
            done.callback(None)
            return result
        d.addBoth(landed)

    def _store_round(self, rounds: list[tuple[list, str]], timeout: float, wait_replicas: int,
                     outcomes: list) -> Deferred[None]:
        """One ping.lua per user slot of each (pings, stale) round, all sent together (those
        of a node in one write). ``stale``: "" for pings not armed; for armed ones, when
        their index entries were armed less half a timeout (ping.lua refuses them after)."""
        groups = []
        calls = []
        for numbered, stale in rounds:
            by_slot: dict[int, list] = defaultdict(list)
            for item in numbered:
                user = self._users(item[1][0].userid)
                by_slot[slot(user.key)].append((item, user))
            for user_slot, members in by_slot.items():
                keys: list[str] = []
                args: list[object] = [timeout, 4, stale, self._max_devices]
                for (_, (ping, hides)), user in members:
                    keys += _user_slot_keys(user)
                    args += ping_args(ping, ping.clientid, hides)
                keys.append(self._feeds[user_slot])
                args.append(self._retention_ms)
                groups.append([item for item, _ in members])
                calls.append((user_slot, keys, args))
        d = self._run_all(_SCRIPTS.ping, calls)
        return d.addCallback(self._round_done, groups, calls, timeout, wait_replicas, outcomes)

    def _round_done(self, results: list, groups: list, calls: list, timeout: float,
                    wait_replicas: int, outcomes: list) -> Deferred[None]:
        steps = []
        for group, call, result in zip(groups, calls, results):
            if isinstance(result, Failure):
                _fill(result, group, outcomes)
                continue
            result = self.change_feed.counted(result)
            if not wait_replicas:  # as below, without a Deferred per slot
                again = self._answer([(r, None) for r in result], group, outcomes, timeout, 0)
                if again is not None:
                    steps.append(again.addErrback(_fill, group, outcomes))
                continue
            d = succeed(result).addCallback(self._stored, call[1][0], wait_replicas)
            d.addCallback(self._answer, group, outcomes, timeout, wait_replicas)
            d.addErrback(_fill, group, outcomes)
            steps.append(d)
        return gatherResults(steps, consumeErrors=True).addCallback(lambda _: None)

    def _arm_then_store(self, numbered: list, timeout: float, wait_replicas: int,
                        outcomes: list) -> Deferred[None]:
        """One arm.lua per partition, all sent together; then every armed ping stored."""
        parts = list(_by(numbered, lambda n: self._users(n[1][0].userid).partition).values())
        calls = []
        for group in parts:
            deadlines, _ = partition_keys(self._prefix, self._users(group[0][1][0].userid).partition)
            members = [deadline_member(ping.userid, ping.clientid) for _, (ping, _) in group]
            calls.append((slot(deadlines), [deadlines], [timeout, *members]))
        d = self._run_all(_SCRIPTS.arm, calls)
        return d.addCallback(self._store_armed, parts, timeout, wait_replicas, outcomes)

    def _store_armed(self, armed: list, parts: list, timeout: float, wait_replicas: int,
                     outcomes: list) -> Deferred[None] | None:
        rounds = []
        for group, when in zip(parts, armed):
            if isinstance(when, Failure):
                _fill(when, group, outcomes)
            else:
                rounds.append((group, f"{float(when) - timeout / 2:.6f}"))
        return self._store_round(rounds, timeout, wait_replicas, outcomes) if rounds else None

    def _stored(self, results: list, key: str, wait_replicas: int) -> Any:
        """The results, with what ``WAIT`` counted on the same node connection."""
        if not wait_replicas:
            return [(result, None) for result in results]
        d = self._cluster.execute(slot(key), "WAIT", wait_replicas, WAIT_TIMEOUT_MS)
        return d.addCallback(lambda acknowledged: [(result, acknowledged) for result in results])

    def _answer(self, results: list[Outcome], numbered: list, outcomes: list, timeout: float,
                wait_replicas: int) -> Deferred[None] | None:
        changes: dict[int, int] = defaultdict(int)
        again = []
        for (n, (ping, hides)), outcome in zip(numbered, results):
            if outcome[0] == NEEDS_ARM:
                again.append((n, (ping, hides)))
                continue
            outcomes[n] = outcome
            change = (outcome[0] == CAME_ONLINE) - (outcome[0] == WENT_OFFLINE)
            if change:
                changes[self._users(ping.userid).partition] += change
        for partition, change in changes.items():
            if change:
                self._count(partition, change)
        if again:
            return self._arm_then_store(again, timeout, wait_replicas, outcomes)
        return None

    def _count(self, partition: int, change: int) -> Deferred[None]:
        """Adjust a partition's online count; a failure is logged, never left in the Deferred."""
        _, count = partition_keys(self._prefix, partition)
        d = self._cluster.execute(slot(count), "INCRBY", count, change)
        return d.addCallbacks(lambda _: None, _count_failed)

    def leave(self, userid: str, clientid: str) -> Deferred[int]:
        user = self._users(userid)
        keys = [*_user_slot_keys(user), self._feeds[slot(user.key)]]
        d = self._run(_SCRIPTS.leave, user.key, keys, [userid, clientid, clientid, self._retention_ms])
        d.addCallback(self.change_feed.counted_one)
        return d.addCallback(self._left, user.partition)

    def _left(self, gone: Any, partition: int) -> Any:
        if gone == 1:
            self._count(partition, -1)
        return gone

    def rearm(self, devices: list[tuple[str, str]], after: float) -> Deferred[None]:
        """The index entries first (one arm.lua per partition), then the truth (one
        rearm.lua per user slot), so the index still holds an entry no later than the
        truth's deadline when it moves sooner (a presence stream's grace). A renewal
        moves the truth later; the sweep then moves the entry to it, as after a ping."""
        targets = [_deadline_of(self._prefix, userid, clientid) for userid, clientid in devices]
        arming = []
        for partition, group in _by(targets, lambda t: t.partition).items():
            deadlines, _ = partition_keys(self._prefix, partition)
            members = [target.member for target in group]
            arming.append(self._run(_SCRIPTS.arm, deadlines, [deadlines], [after, *members]))
        d = gatherResults(arming, consumeErrors=True)
        return d.addCallback(self._rearm_truth, targets, after)

    def _rearm_truth(self, _: object, targets: list[_DeviceDeadline],
                     after: float) -> Deferred[None]:
        steps = []
        for _, group in _by(targets, lambda t: t.slot).items():
            keys = [target.truth for target in group]
            members = [target.clientid for target in group]
            steps.append(self._run(_SCRIPTS.rearm, keys[0], keys, [after, *members]))
        return gatherResults(steps, consumeErrors=True).addCallback(lambda _: None)

    def restore(self, latest: Ping, devices: Iterable[tuple[Presence, float]]) -> Deferred[None]:
        return fail(NotImplementedError("restoring into a Redis Cluster"))

    def refused(self, error: object) -> None:
        """Nothing to move: the slot map follows failovers on its own."""

    # Reads.

    def read(self, userids: list[str]) -> Deferred[list[Any]]:
        """One read_many.lua per user slot, those of a node sent together; the rows in
        ``userids``' order."""
        groups = list(_by(enumerate(userids), lambda n: slot(self._prefix + n[1])).values())
        calls: list[tuple[int, list[str], list[object]]] = []
        for group in groups:
            keys: list[str] = []
            for _, userid in group:
                user = self._users(userid)
                keys += (user.key, user.devices, user.online)
            calls.append((slot(keys[0]), keys, []))
        d = self._run_all(_SCRIPTS.read_many, calls)
        return d.addCallback(_in_order, groups, len(userids))

    def _change_feed(self) -> RedisFeed:
        """The change feed its scripts record (lua/feed.lua): a stream per user slot; it
        counts what they record."""
        cluster = self._cluster

        def run(script: Script, keys: Sequence[str], args: Sequence[object]) -> Deferred[Any]:
            return script.run(cluster.commands(slot(keys[0])), keys, args)

        return RedisFeed(
            self._prefix, self._retention_ms / 1000, self._reactor,
            ClusterReader(cluster, self._prefix, _SCRIPTS), _SCRIPTS, run,
            lambda *command: cluster.execute(slot(str(command[1])), *command),
        )

    # Erasure, the control channel, scans.

    def erase(self, userid: str, message: str) -> Deferred[int]:
        """In the user's slot; their partition's index entries are dropped by the
        sweep when due (nothing is behind them), its count adjusted here."""
        user = self._users(userid)
        keys = [*_user_slot_keys(user), self._feeds[slot(user.key)]]
        d = self._run(_SCRIPTS.erase, user.key, keys, [message, userid, self._retention_ms])
        d.addCallback(self.change_feed.counted_one)
        return d.addCallback(self._left, user.partition)

    def notify(self, channel: str, message: str) -> Deferred[object]:
        return self._run(_SCRIPTS.notify, channel, [channel], [message])

    def scan_nodes(self) -> list[int]:
        lowest: dict[object, int] = {}
        for n in range(CLUSTER_SLOTS):
            owner = self._cluster.owner(n)
            if owner is not None and owner not in lowest:
                lowest[owner] = n
        return sorted(lowest.values())

    def scan(self, node: int, cursor: int, match: str, count: int, kind: str) -> Deferred[Any]:
        return self._cluster.execute(node, "SCAN", cursor, "MATCH", match, "COUNT", count,
                                     "TYPE", kind)

    def prune(self, userids: list[str], cutoff: float) -> Deferred[object]:
        """One prune.lua per user slot, each on its node."""
        runs = []
        for group in _by(userids, lambda u: slot(self._prefix + u)).values():
            keys: list[str] = []
            for userid in group:
                user = self._users(userid)
                keys += (user.devices, user.online)
            runs.append(self._run(_SCRIPTS.prune, keys[0], keys, [cutoff]))
        return gatherResults(runs, consumeErrors=True).addCallback(lambda _: None)

    # Presence deadlines.

    def sweep(self, batch: int) -> Deferred[Swept]:
        """Each partition's due entries, each checked in its user's slot (see the module)."""
        if not self._cluster.complete:
            return fail(StoreUnavailable())
        rounds = [self._sweep_partition(partition, batch) for partition in range(PARTITIONS)]
        d = gatherResults(rounds, consumeErrors=True)
        return d.addCallback(lambda swept: Swept(sum(s.online for s in swept),
                                                 sum(s.gone for s in swept),
                                                 any(s.again for s in swept),
                                                 any(s.lost for s in swept)))

    def _sweep_partition(self, partition: int, batch: int) -> Deferred[Swept]:
        deadlines, count = partition_keys(self._prefix, partition)
        d = self._run(_SCRIPTS.due, deadlines, [deadlines, count], [batch])
        return d.addCallback(self._expire, partition, batch)

    def _expire(self, found: list, partition: int, batch: int) -> Deferred[Swept] | Swept:
        online, lost = int(found[0]), int(found[1]) == 1
        entries = list(zip(found[3::3], found[4::3]))
        if not entries:
            return Swept(online, 0, False, lost)
        checks = []
        for user_slot, group in _by(entries, lambda entry: slot(self._prefix + _device(entry)[0])).items():
            keys: list[str] = []
            args: list[object] = [4]
            for entry in group:
                userid, clientid = _device(entry)
                keys += _user_slot_keys(self._users(userid))
                args += (clientid, userid, clientid)
            d = self._run(_SCRIPTS.expire, keys[0], [*keys, self._feeds[user_slot]],
                          [*args, self._retention_ms])
            d.addCallback(self.change_feed.counted)
            checks.append(d.addCallback(_checked, group))
        d = gatherResults(checks, consumeErrors=True).addCallback(self._reindex, partition)
        return d.addCallback(
            lambda gone: Swept(online - gone, gone, len(entries) >= batch, lost))

    def _reindex(self, checked: list, partition: int) -> Deferred[int]:
        deadlines, count = partition_keys(self._prefix, partition)
        gone = 0
        args: list[object] = [0]
        for (member, score), offline, pending in (item for batch in checked for item in batch):
            gone += int(offline)
            args += (member, score, pending)
        args[0] = gone
        d = self._run(_SCRIPTS.reindex, deadlines, [deadlines, count], args)
        return d.addCallback(lambda _: gone)

    # Pub/sub.

    def subscribe(self, channel: str) -> Deferred[None]:
        return self._subscriber.subscribe(channel)

    def unsubscribe(self, channel: str) -> Deferred[None]:
        self._subscriber.unsubscribe(channel)
        return succeed(None)

    def _message(self, channel: str, text: str) -> None:
        if self._events is not None:
            self._events.message(channel, text)

    # The cluster's state.

    def _map_changed(self) -> None:
        self._subscriber.map_changed()

    def _commands_ready(self) -> None:
        if self._was_ready:
            return
        self._was_ready = True
        self._ready()

    def _commands_lost(self) -> None:
        if self._was_ready:
            self._was_ready = False
            self.reconnects["commands"] += 1

    def _bus_lost(self) -> None:
        self.reconnects["subscriber"] += 1
        if self._events is not None:
            self._events.bus_lost()

    def _ready(self) -> None:
        if self._events is not None:
            self._events.ready()


class _DeviceDeadline(NamedTuple):
    """Where a device's deadline lives: its user's slot and truth, its index entry."""

    slot: int
    truth: str
    clientid: str
    partition: int
    member: str


@lru_cache(maxsize=REARM_CACHE)
def _deadline_of(prefix: str, userid: str, clientid: str) -> _DeviceDeadline:
    """The same at every renewal of a presence stream's device: made once."""
    user = user_keys(prefix, userid, cluster=True)
    return _DeviceDeadline(slot(user.key), user.deadlines, clientid, user.partition,
                           deadline_member(userid, clientid))


def _device(entry: tuple[str, str]) -> tuple[str, str]:
    # An entry not heartbeat's reads as nobody's device, and is dropped.
    return from_member(entry[0]) or ("", "")


def _checked(out: list, group: list) -> list:
    """An expire.lua's answers, (gone, pending) per entry, beside the entries checked."""
    return list(zip(group, out[::2], out[1::2]))


def _fill(failure: Failure, numbered: list, outcomes: list) -> None:
    """Every ping of a failed step fails, with the step's Failure (the others stand)."""
    for n, _ in numbered:
        if outcomes[n] is None:
            outcomes[n] = (failure, None)


def _in_order(results: list, groups: list[list], size: int) -> list[Any] | Failure:
    """Each slot's rows, as the users were asked for; the first failure if any read failed."""
    rows: list[Any] = [None] * size
    for group, result in zip(groups, results):
        if isinstance(result, Failure):
            return result
        for (n, _), row in zip(group, result):
            rows[n] = row
    return rows


def _count_failed(failure: Failure) -> None:
    if not failure.check(StoreUnavailable):
        log.warn("redis cluster: adjusting the online count failed: {why}",
                 why=failure.getErrorMessage())
