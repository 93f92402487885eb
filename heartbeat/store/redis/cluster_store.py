"""The Redis store on a Redis Cluster (``redis+cluster://``): presence over many shards.

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
- an **index entry** in the partition (``[user, device]`` → a time), armed
  *before* the ping is stored, only telling the sweep when to look.

A ping arms the index (``ARM``, on the partition's node), then stores
(``STORE``, on the user's node); it is ``200`` only when both did. Dying in
between leaves an entry with nothing behind it, which the sweep drops. An
entry is armed ``PRESENCE_TIMEOUT`` ahead and ``STORE`` refuses a ping armed
more than half of that ago, so the sweep can only find an entry due once
the ping behind it was stored or refused. The sweep then asks the user's
slot (``EXPIRE``): a device due goes offline (once: its deadline is removed
in that step); one re-armed since says its deadline, and the index entry is
moved to it; one gone drops the entry — each only if no ping re-armed the
entry meanwhile (``REINDEX`` compares the time it read).

The online-user count per partition is kept beside the index, adjusted
after the user's step reports the change: an instance dying between the two
leaves it off by one (it is a gauge, floored at 0).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import ConnectionError as RedisConnectionError

from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.presence import Ping, UserState
from heartbeat.core.store_contract import BusListener
from heartbeat.store.interface import StoreUnavailable
from heartbeat.store.redis.address import RedisAddress
from heartbeat.store.redis.cluster import Cluster, ShardedSubscriber
from heartbeat.store.redis.keys import PARTITIONS, UserKeys, partition_keys, slot, user_keys
from heartbeat.store.redis.scripts import (
    READ_MANY,
    Script,
    deadline_member,
    from_member,
    from_row,
    ping_message,
    relay,
)
from heartbeat.store.redis.store import (
    REPLY_TIMEOUT,
    SWEEP_BATCH,
    SWEEP_INTERVAL,
    WAIT_TIMEOUT_MS,
    Replicas,
    queue_for_turn,
)
from heartbeat.store.redis.tls import load_trust_root

log = Logger()

_NOW = (
    "local clock = redis.call('TIME')\n"
    "local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000\n"
)

# Takes one device offline in the user's slot; publishes the device's event, then the
# user's if that was their last online device. Returns 1 when the user went offline.
_OFFLINE = (
    "local function offline(key, devices, online, userid, clientid)\n"
    "  if redis.call('SREM', online, clientid) == 0 then return 0 end\n"
    "  local device = redis.call('HGET', devices, clientid)\n"
    "  local space = device and string.find(device, ' ', 1, true)\n"
    "  if space then\n"
    "    redis.call('SPUBLISH', key, cjson.encode({userid = userid, clientid = clientid,\n"
    "      online = false, time = tonumber(string.sub(device, 1, space - 1)),\n"
    "      status = string.sub(device, space + 1)}))\n"
    "  end\n"
    "  if redis.call('SCARD', online) > 0 then return 0 end\n"
    "  local user = redis.pcall('HMGET', key, 'time', 'status')\n"
    "  if not user.err and user[1] and user[2] then\n"
    "    redis.call('SPUBLISH', key, cjson.encode({userid = userid, online = false,\n"
    "      time = tonumber(user[1]), status = user[2]}))\n"
    "  end\n"
    "  return 1\n"
    "end\n"
)

# KEYS: a partition. ARGV: the timeout, then index members. Returns the time armed.
ARM = Script(
    _NOW
    + "local deadline = string.format('%.6f', now + tonumber(ARGV[1]))\n"
    "for i = 2, #ARGV do redis.call('ZADD', KEYS[1], deadline, ARGV[i]) end\n"
    "return deadline\n"
)

# KEYS: per ping the user's key (their channel), devices, online set and deadlines, all
# of one slot. ARGV: the timeout, the time ARM armed, then per ping its user, time,
# status, device and message. A ping with no message hides (HIDDEN_STATUSES): its
# deadline is armed, but to watchers its device goes offline and nothing of it is
# stored. Returns per ping 1 (stored), 2 (stored, and the user came online), 3 (hidden),
# 4 (hidden, and the user went offline) or the error that kept it from being stored.
STORE = Script(
    _OFFLINE + _NOW
    + "local timeout = tonumber(ARGV[1])\n"
    "if now > tonumber(ARGV[2]) - timeout / 2 then\n"
    "  return redis.error_reply('STALE the deadline index was armed too long ago')\n"
    "end\n"
    "local deadline = string.format('%.6f', now + timeout)\n"
    "local results = {}\n"
    "for i = 1, #KEYS / 4 do\n"
    "  local key, devices, online, deadlines = KEYS[4 * i - 3], KEYS[4 * i - 2],\n"
    "    KEYS[4 * i - 1], KEYS[4 * i]\n"
    "  local a = 5 * i - 2\n"
    "  local userid, time, status, clientid, message = ARGV[a], ARGV[a + 1], ARGV[a + 2],\n"
    "    ARGV[a + 3], ARGV[a + 4]\n"
    "  if message == '' then\n"
    "    redis.call('ZADD', deadlines, deadline, clientid)\n"
    "    results[i] = 3 + offline(key, devices, online, userid, clientid)\n"
    "  else\n"
    "    local stored = redis.pcall('HSET', key, 'time', time, 'status', status)\n"
    "    if type(stored) == 'table' and stored.err then\n"
    "      results[i] = stored.err\n"
    "    else\n"
    "      redis.call('HSET', devices, clientid, time .. ' ' .. status)\n"
    "      local came = 0\n"
    "      if redis.call('SADD', online, clientid) == 1 and redis.call('SCARD', online) == 1 then\n"
    "        came = 1\n"
    "      end\n"
    "      redis.call('ZADD', deadlines, deadline, clientid)\n"
    "      redis.call('SPUBLISH', key, message)\n"
    "      results[i] = 1 + came\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return results\n"
)

# KEYS: a partition and its online count. ARGV: the most entries to take. Returns the
# count, then each due entry's member and time. Reads only.
DUE = Script(
    _NOW
    + "local out = {tonumber(redis.call('GET', KEYS[2])) or 0}\n"
    "local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now),\n"
    "  'WITHSCORES', 'LIMIT', 0, ARGV[1])\n"
    "for _, item in ipairs(due) do out[#out + 1] = item end\n"
    "return out\n"
)

# KEYS: per device the user's key, devices, online set and deadlines (one slot). ARGV:
# per device its user and id. Returns per device: 1 if the user went offline else 0,
# then the device's deadline if it is not due yet, else ''.
EXPIRE = Script(
    _OFFLINE + _NOW
    + "local out = {}\n"
    "for i = 1, #ARGV / 2 do\n"
    "  local k = 4 * i - 3\n"
    "  local userid, clientid = ARGV[2 * i - 1], ARGV[2 * i]\n"
    "  local score = redis.call('ZSCORE', KEYS[k + 3], clientid)\n"
    "  local gone, pending = 0, ''\n"
    "  if score and tonumber(score) <= now then\n"
    "    redis.call('ZREM', KEYS[k + 3], clientid)\n"
    "    gone = offline(KEYS[k], KEYS[k + 1], KEYS[k + 2], userid, clientid)\n"
    "  elseif score then\n"
    "    pending = score\n"
    "  end\n"
    "  out[2 * i - 1] = gone\n"
    "  out[2 * i] = pending\n"
    "end\n"
    "return out\n"
)

# KEYS: a partition and its online count. ARGV: users gone offline, then per entry its
# member, the time DUE read and the time to move it to ('' drops it). An entry armed
# again since (its time changed) is left.
REINDEX = Script(
    "for i = 2, #ARGV, 3 do\n"
    "  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])\n"
    "  if score and tonumber(score) == tonumber(ARGV[i + 1]) then\n"
    "    if ARGV[i + 2] == '' then redis.call('ZREM', KEYS[1], ARGV[i])\n"
    "    else redis.call('ZADD', KEYS[1], ARGV[i + 2], ARGV[i]) end\n"
    "  end\n"
    "end\n"
    "if ARGV[1] ~= '0' then redis.call('DECRBY', KEYS[2], ARGV[1]) end\n"
    "return 1\n"
)

# KEYS: the user's key, devices, online set and deadlines. ARGV: user, device.
LEAVE = Script(
    _OFFLINE
    + "redis.call('ZREM', KEYS[4], ARGV[2])\n"
    "return offline(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])\n"
)

Waiting = list[tuple[Any, Deferred[Any]]]


def _by(items: Iterable[Any], key: Callable[[Any], int]) -> dict[int, list[Any]]:
    groups: dict[int, list[Any]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return groups


def _along(rows: list, group: list) -> list:
    """A READ_MANY's rows beside the users asked for."""
    return list(zip(group, rows))


def _checked(out: list, group: list) -> list:
    """An EXPIRE's answers, (gone, pending) per entry, beside the entries checked."""
    return list(zip(group, out[::2], out[1::2]))


def _partition_swept(gone: int, online: int, full: bool) -> tuple[int, bool]:
    return online - gone, full


def _user_slot_keys(user: UserKeys) -> tuple[str, str, str, str]:
    return user.key, user.devices, user.online, user.deadlines


class ClusterStore(Service):
    """The Redis store over a Redis Cluster; same contract as the single-Redis one."""

    listener: BusListener | None = None
    kind = "redis"

    def __init__(self, address: RedisAddress, prefix: str, reactor: Any, timeout: float,
                 ca_file: str | None = None, wait_replicas: int = 0,
                 hiding: Hiding = Hiding()) -> None:
        self._reactor = reactor
        self._hiding = hiding
        self._prefix = prefix
        self._timeout = timeout
        self._wait_replicas = wait_replicas
        self._replicas = Replicas(wait_replicas)
        self._last_error: str | None = None
        trust = load_trust_root(ca_file) if ca_file else None
        self._cluster = Cluster(reactor, address, trust, REPLY_TIMEOUT, self._map_changed,
                                self._commands_ready, self._commands_lost)
        self._subscriber = ShardedSubscriber(reactor, self._cluster, address, trust,
                                             self._message, self._bus_lost, self._resync)
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = reactor
        self._sweeping = False
        self._online_users: int | None = None
        self.offline_transitions = 0
        self.reconnects = {"commands": 0, "subscriber": 0}
        self._writes: Waiting = []
        self._reads: Waiting = []
        self._closed = False
        self._was_ready = False

    # Health.

    @property
    def available(self) -> bool:
        """Every slot's master is reachable, and no watched channel is lost (being moved)."""
        return self._cluster.complete and self._subscriber.caught_up

    @property
    def failovers(self) -> int:
        """Times the slot map changed (a failover, a reshard) and the links followed."""
        return self._cluster.failovers

    @property
    def liveness_failures(self) -> dict[str, int]:
        links = self._cluster.links + self._subscriber.links
        return {link.name: link.liveness_failures for link in links}

    def startService(self) -> None:
        super().startService()
        self._cluster.start()
        self._sweeper.start(SWEEP_INTERVAL, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.close()

    def close(self) -> Deferred[None]:
        self._closed = True
        if self._sweeper.running:
            self._sweeper.stop()
        stopping = [self._subscriber.stop(), self._cluster.stop()]
        return gatherResults(stopping).addCallback(lambda _: None)

    def _users(self, userid: str) -> UserKeys:
        return user_keys(self._prefix, userid, cluster=True)

    def _run(self, script: Script, key: str, keys: list[str], args: list[object]) -> Deferred[Any]:
        """``script`` on the master of ``key``'s slot (``keys`` must all be in it)."""
        return script.run(self._cluster.commands(slot(key)), keys, args)

    # Pings.

    def ping(self, ping: Ping) -> Deferred[None]:
        """Stored with the other pings of this reactor turn: one ARM per partition,
        one STORE per user slot, each on its own node.

        A node that is down fails only what goes to it (at once: the cluster
        never queues), so a master's failover costs 503s to the users of its
        slots and of the partitions it holds, not to everyone.
        """
        return queue_for_turn(self._reactor, self._writes, ping, self._write_batch)

    def _write_batch(self) -> None:
        writes, self._writes = self._writes, []
        for partition, group in _by(writes, lambda w: self._users(w[0].userid).partition).items():
            deadlines, _ = partition_keys(self._prefix, partition)
            members = [deadline_member(ping.userid, ping.clientid) for ping, _ in group]
            d = self._run(ARM, deadlines, [deadlines], [self._timeout, *members])
            d.addCallbacks(self._store, self._fail, callbackArgs=(partition, group),
                           errbackArgs=(group,))

    def _store(self, armed: str, partition: int, writes: Waiting) -> None:
        for _, group in _by(writes, lambda w: slot(self._prefix + w[0].userid)).items():
            keys: list[str] = []
            args: list[object] = [self._timeout, armed]
            for ping, _ in group:
                keys += _user_slot_keys(self._users(ping.userid))
                hides = self._hiding.hides(ping.status)
                args += (ping.userid, ping.time, ping.status, ping.clientid,
                         "" if hides else ping_message(ping))
            d = self._run(STORE, keys[0], keys, args)
            if self._wait_replicas:
                d.addCallback(self._replicated, keys[0])
            d.addCallbacks(self._answer_writes, self._fail, callbackArgs=(partition, group),
                           errbackArgs=(group,))

    def _replicated(self, results: list, key: str) -> Deferred[list]:
        """The results once ``REDIS_WAIT_REPLICAS`` replicas hold them (else a 503).

        WAIT goes to the same node connection (one per node) as the STORE.
        """
        d = self._cluster.execute(slot(key), "WAIT", self._wait_replicas, WAIT_TIMEOUT_MS)
        return d.addCallback(self._enough, results)

    def _enough(self, acknowledged: object, results: list) -> list:
        if not self._replicas.enough(acknowledged):
            raise StoreUnavailable()
        return results

    def _answer_writes(self, results: list, partition: int, writes: Waiting) -> None:
        self._last_error = None
        change = 0
        for result, (ping, d) in zip(results, writes):
            if result in (1, 2, 3, 4):
                if result == 2:  # came online
                    change += 1
                elif result == 4:  # a ping that hides took the user offline
                    change -= 1
                    self.offline_transitions += 1
                d.callback(None)
            else:  # e.g. WRONGTYPE: the user's key holds something else
                log.error("redis refused to store {ping}: {error}", ping=ping, error=result)
                d.errback(StoreUnavailable())
        if change:
            self._count(partition, change)

    def _count(self, partition: int, change: int) -> None:
        _, count = partition_keys(self._prefix, partition)
        d = self._cluster.execute(slot(count), "INCRBY", count, change)
        d.addErrback(self._failed)

    def leave(self, userid: str, clientid: str) -> Deferred[None]:
        user = self._users(userid)
        d = self._run(LEAVE, user.key, list(_user_slot_keys(user)), [userid, clientid])
        d.addCallbacks(self._left, self._failed, (user.partition,))
        return d

    def _left(self, gone: object, partition: int) -> None:
        if gone == 1:
            self.offline_transitions += 1
            self._count(partition, -1)

    # Reads.

    def get(self, userids: Iterable[str]) -> Deferred[dict[str, UserState | None]]:
        """The stored states: one READ per user slot, with every other ``get`` of this turn."""
        users = list(dict.fromkeys(userids))
        if not users:
            return succeed({})
        return queue_for_turn(self._reactor, self._reads, users, self._read_batch)

    def _read_batch(self) -> None:
        reads, self._reads = self._reads, []
        users = list(dict.fromkeys(userid for wanted, _ in reads for userid in wanted))
        batches = []
        for _, group in _by(users, lambda userid: slot(self._prefix + userid)).items():
            keys: list[str] = []
            for userid in group:
                user = self._users(userid)
                keys += (user.key, user.devices, user.online)
            d = self._run(READ_MANY, keys[0], keys, [])
            batches.append(d.addCallback(_along, group))
        d = gatherResults(batches, consumeErrors=True)
        d.addCallbacks(self._answer_reads, self._fail, callbackArgs=(reads,), errbackArgs=(reads,))

    def _answer_reads(self, batches: list, reads: Waiting) -> None:
        states = {userid: from_row(userid, row) for batch in batches for userid, row in batch}
        for wanted, d in reads:
            d.callback({userid: states[userid] for userid in wanted})

    # Failures.

    def _fail(self, failure: Failure, waiting: Waiting) -> None:
        self._failed(failure)
        for _, d in waiting:
            if not d.called:
                d.errback(StoreUnavailable())

    def _failed(self, failure: Failure) -> Failure:
        if isinstance(failure.value, FirstError):
            failure = failure.value.subFailure
        why = failure.getErrorMessage()
        # Once per kind of error until a batch succeeds: during a failover every
        # batch meets the same CLUSTERDOWN for seconds.
        if not failure.check(StoreUnavailable, RedisConnectionError) and why != self._last_error:
            self._last_error = why
            log.warn("redis command failed: {why}", why=why)
        return Failure(StoreUnavailable())

    # Presence deadlines.

    def _sweep(self) -> None:
        """Each partition's due entries, each checked in its user's slot (see the module)."""
        if self._sweeping or not self._cluster.complete:
            return
        self._sweeping = True
        rounds = [self._sweep_partition(partition) for partition in range(PARTITIONS)]
        d = gatherResults(rounds, consumeErrors=True)
        d.addCallback(self._swept_all)
        d.addErrback(self._failed)
        d.addBoth(self._swept)

    def _sweep_partition(self, partition: int) -> Deferred[tuple[int, bool]]:
        deadlines, count = partition_keys(self._prefix, partition)
        d = self._run(DUE, deadlines, [deadlines, count], [SWEEP_BATCH])
        return d.addCallback(self._expire, partition)

    def _expire(self, found: list, partition: int) -> Deferred[tuple[int, bool]]:
        online = int(found[0])
        entries = list(zip(found[1::2], found[2::2]))
        if not entries:
            return succeed((online, False))
        checks = []
        for _, group in _by(entries, lambda entry: slot(self._prefix + self._device(entry)[0])).items():
            keys: list[str] = []
            args: list[object] = []
            for entry in group:
                userid, clientid = self._device(entry)
                keys += _user_slot_keys(self._users(userid))
                args += (userid, clientid)
            d = self._run(EXPIRE, keys[0], keys, args)
            checks.append(d.addCallback(_checked, group))
        reindexed: Deferred[int] = gatherResults(checks, consumeErrors=True).addCallback(
            self._reindex, partition)
        return reindexed.addCallback(_partition_swept, online, len(entries) >= SWEEP_BATCH)

    @staticmethod
    def _device(entry: tuple[str, str]) -> tuple[str, str]:
        # An entry not heartbeat's reads as nobody's device, and is dropped.
        return from_member(entry[0]) or ("", "")

    def _reindex(self, checked: list, partition: int) -> Deferred[int]:
        deadlines, count = partition_keys(self._prefix, partition)
        gone = 0
        args: list[object] = [0]
        for (member, score), offline, pending in (item for batch in checked for item in batch):
            gone += int(offline)
            args += (member, score, pending)
        args[0] = gone
        self.offline_transitions += gone
        d = self._run(REINDEX, deadlines, [deadlines, count], args)
        return d.addCallback(lambda _: gone)

    def _swept_all(self, rounds: list[tuple[int, bool]]) -> bool:
        self._online_users = max(0, sum(online for online, _ in rounds))
        return any(again for _, again in rounds)

    def _swept(self, again: object) -> None:
        self._sweeping = False
        if again is True:
            self._reactor.callLater(0, self._sweep)

    def online_users(self) -> int | None:
        return self._online_users

    # Pub/sub.

    def subscribe(self, userid: str) -> Deferred[None]:
        return self._subscriber.subscribe(self._prefix + userid)

    def unsubscribe(self, userid: str) -> Deferred[None]:
        self._subscriber.unsubscribe(self._prefix + userid)
        return succeed(None)

    def _message(self, channel: str, text: str) -> None:
        relay(self.listener, self._prefix, channel, text)

    # The cluster's state.

    def _map_changed(self) -> None:
        self._subscriber.map_changed()

    def _commands_ready(self) -> None:
        if self._was_ready:
            return
        self._was_ready = True
        self._resync()

    def _commands_lost(self) -> None:
        if self._was_ready:
            self._was_ready = False
            self.reconnects["commands"] += 1

    def _bus_lost(self) -> None:
        self.reconnects["subscriber"] += 1
        if self.listener is not None:
            self.listener.bus_lost()

    def _resync(self) -> None:
        if self.available and self.listener is not None:
            self.listener.resync()
