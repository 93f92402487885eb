"""The Redis store over a fake topology, the Lua as built for each layout, and the
Cluster topology's own parts: no Redis needed."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from txredisapi import ResponseError

from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.presence import Ping, Presence, UserState
from heartbeat.core.store_contract import StoreUnavailable
from heartbeat.store.redis import keys
from heartbeat.store.redis.address import parse_redis
from heartbeat.store.redis.cluster_topology import ClusterTopology
from heartbeat.store.redis.lua import (
    CAME_ONLINE,
    CODES,
    HIDDEN,
    NEEDS_ARM,
    STORED,
    WENT_OFFLINE,
    build,
    scripts,
)
from heartbeat.store.redis.store import RedisStore
from heartbeat.store.redis.topology import Swept
from heartbeat.store.redis.tuning import READ_CHUNK, SWEEP_INTERVAL


class Recorder:
    def __init__(self) -> None:
        self.delivered: list[Presence] = []
        self.resyncs = 0
        self.losses = 0

    def deliver(self, change: Presence, position: object = None, judged: object = None) -> None:
        self.delivered.append(change)

    def bus_lost(self) -> None:
        self.losses += 1

    def resync(self) -> None:
        self.resyncs += 1


class FakeTopology:
    """Answers what it is told to, and records what the store asked."""

    def __init__(self) -> None:
        self.reconnects = {"commands": 0, "subscriber": 0}
        self.available = True
        self.writable = True
        self.failovers = 0
        self.liveness_failures: dict[str, int] = {}
        self.events: Any = None
        self.stored: list[list[tuple[Ping, bool]]] = []
        self.outcomes: list[Any] | None = None
        self.reads: list[list[str]] = []
        self.sweeps: list[Swept] = []
        self.swept = 0
        self.refusals: list[object] = []

    def start(self, events: Any) -> None:
        self.events = events

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def store(self, pings, timeout, wait_replicas):
        self.stored.append(pings)
        outcomes = self.outcomes or [(STORED, 1 if wait_replicas else None) for _ in pings]
        return succeed(outcomes)

    def read(self, userids):
        self.reads.append(userids)
        return succeed([["1", f"s-{userid}", [], []] for userid in userids])

    def sweep(self, batch):
        self.swept += 1
        return succeed(self.sweeps.pop(0) if self.sweeps else Swept(0, 0, False))

    def leave(self, userid, clientid):
        return succeed(1)

    def restore(self, latest, devices):
        return succeed(None)

    def subscribe(self, channel):
        return succeed(None)

    def unsubscribe(self, channel):
        return succeed(None)

    def refused(self, error):
        self.refusals.append(error)


def store_over(topology: FakeTopology, clock: Clock, **kwargs: Any) -> RedisStore:
    store = RedisStore(None, "hb:", clock, 60, topology=topology, **kwargs)
    store.listener = Recorder()  # type: ignore[assignment]
    store.startService()
    return store


def results(ds: list[Deferred]) -> list[object]:
    out: list[object] = []
    for d in ds:
        d.addBoth(out.append)
    return out


def test_the_pings_of_one_turn_are_one_store_call_in_order():
    topology, clock = FakeTopology(), Clock()
    store = store_over(topology, clock, hiding=Hiding.of(("3",)))
    pings = [Ping("a", 1, "0"), Ping("b", 2, "3"), Ping("a", 3, "1")]
    answers = results([store.ping(ping) for ping in pings])
    assert topology.stored == []
    clock.advance(0)
    assert topology.stored == [[(pings[0], False), (pings[1], True), (pings[2], False)]]
    assert answers == [None, None, None]


def test_each_outcome_answers_its_own_ping():
    topology, clock = FakeTopology(), Clock()
    store = store_over(topology, clock, wait_replicas=1)
    topology.outcomes = [(STORED, 1), (WENT_OFFLINE, 1), ("WRONGTYPE no", None),
                         (Failure(ResponseError("CLUSTERDOWN")), None), (CAME_ONLINE, 0)]
    answers = results([store.ping(Ping(f"u{n}", n, "0")) for n in range(5)])
    clock.advance(0)
    assert answers[:2] == [None, None]
    assert all(isinstance(a, Failure) and a.check(StoreUnavailable) for a in answers[2:])
    assert store.offline_transitions == 1
    # The refusals are the topology's to judge (a READONLY replica moves the link).
    assert topology.refusals == ["WRONGTYPE no", "CLUSTERDOWN"]


def test_the_result_codes_are_one_table():
    assert CODES == {"STORED": 1, "CAME_ONLINE": 2, "HIDDEN": 3, "WENT_OFFLINE": 4, "NEEDS_ARM": 5}
    assert (STORED, CAME_ONLINE, HIDDEN, WENT_OFFLINE) == (1, 2, 3, 4)


def test_no_ping_is_queued_while_the_topology_cannot_write():
    topology, clock = FakeTopology(), Clock()
    store = store_over(topology, clock)
    topology.writable = False
    for d in (store.ping(Ping("a", 1, "0")), store.get(["a"]), store.leave("a", "c")):
        assert isinstance(results([d])[0], Failure)
    clock.advance(0)
    assert topology.stored == [] and topology.reads == []


def test_a_resync_of_20000_users_is_read_in_chunks():
    topology, clock = FakeTopology(), Clock()
    store = store_over(topology, clock)
    users = [f"u{n}" for n in range(20000)]
    answer = results([store.get(users), store.get(["u5", "late"])])
    clock.advance(0)
    assert max(len(chunk) for chunk in topology.reads) == READ_CHUNK
    assert [u for chunk in topology.reads for u in chunk] == users + ["late"]
    assert answer[0]["u19999"] == UserState(Presence("u19999", 1, "s-u19999", False), {})
    assert set(answer[1]) == {"u5", "late"}


def test_the_sweep_loop_counts_and_goes_again_when_full():
    topology, clock = FakeTopology(), Clock()
    store = store_over(topology, clock)
    assert store.online_users() is None
    topology.sweeps = [Swept(5, 2, True), Swept(3, 1, False)]
    clock.advance(SWEEP_INTERVAL)
    # A full partition: swept again at once, not a second later.
    assert topology.swept == 2
    assert store.online_users() == 3 and store.offline_transitions == 3
    clock.advance(SWEEP_INTERVAL / 2)
    assert topology.swept == 2


def test_a_failing_sweep_is_not_left_in_a_deferred():
    topology, clock = FakeTopology(), Clock()
    store = store_over(topology, clock)
    topology.sweep = lambda batch: fail(ResponseError("LOADING"))  # type: ignore[method-assign]
    clock.advance(SWEEP_INTERVAL)
    clock.advance(SWEEP_INTERVAL)  # not stuck "sweeping"
    assert store.online_users() is None


def test_the_hub_resyncs_only_once_the_topology_is_available():
    topology, clock = FakeTopology(), Clock()
    store = store_over(topology, clock)
    topology.available = False
    topology.events.ready()
    assert store.listener.resyncs == 0
    topology.available = True
    topology.events.ready()
    assert store.listener.resyncs == 1
    topology.events.bus_lost()
    assert store.listener.losses == 1
    topology.events.message("hb:alice", '{"time":1,"status":"x"}')
    topology.events.message("other:alice", '{"time":1,"status":"x"}')
    assert store.listener.delivered == [Presence("alice", 1, "x")]


# The Lua, built for each layout.

@pytest.mark.parametrize("layout, publish, other", [("single", "'PUBLISH'", "'SPUBLISH'"),
                                                    ("cluster", "'SPUBLISH'", "'PUBLISH'")])
def test_every_script_is_built_for_its_layout(layout, publish, other):
    built = scripts(layout)
    for name in ("ping", "leave", "expire"):
        source = getattr(built, name).source
        assert f"local PUBLISH = {publish}" in source and other not in source
        assert "--! needs" not in source
    assert "local function store_ping" in built.ping.source
    assert "local STORED = 1" in built.ping.source
    assert scripts("single").ping.sha != scripts("cluster").ping.sha


def test_a_fragment_is_written_once():
    # emit() is the one place a change goes out, in both layouts.
    assert build("offline", "single").count("redis.call(PUBLISH") == 0
    assert build("emit", "cluster").count("redis.call(PUBLISH, key, message)") == 1


# The Cluster topology's own parts.

def cluster_topology() -> ClusterTopology:
    address = parse_redis("redis+cluster://127.0.0.1:1")
    assert address is not None
    return ClusterTopology(Clock(), address, "hb:", None)


def test_the_slot_table_is_built_when_the_cluster_topology_is_made(monkeypatch):
    monkeypatch.setattr(keys, "_slot_tags", [])
    cluster_topology()
    assert len(keys._slot_tags) == keys.CLUSTER_SLOTS
    # On the reactor, later, no table is built: a user like a}b costs one lookup.
    monkeypatch.setattr(keys, "crc_hqx", lambda *_: pytest.fail("built on first use"))
    assert keys.slot_tag(5) == keys._slot_tags[5]


class FailingCluster:
    def execute(self, slot: int, *args: object) -> Deferred[Any]:
        return fail(ResponseError("CLUSTERDOWN The cluster is down"))


def test_a_failed_count_update_is_logged_not_left_unhandled():
    topology = cluster_topology()
    topology._cluster = FailingCluster()  # type: ignore[assignment]
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        # A user came online; nobody waits for the count's update.
        topology._answer([(CAME_ONLINE, None)], [(0, (Ping("a", 1, "0"), False))], [None], 60, 0)
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any("CLUSTERDOWN" in str(e.get("why")) for e in events)
    assert not any(e.get("log_failure") is not None for e in events)


class ScriptedCluster:
    """Records each script call the Cluster topology makes; answers when told."""

    def __init__(self, topology: ClusterTopology) -> None:
        self.calls: list[tuple[str, list[str], list[object], Deferred]] = []
        names = {script.sha: name for name, script in vars(scripts("cluster")).items()}

        def run(script: Any, key: str, keys: list[str], args: list[object]) -> Deferred:
            d: Deferred = Deferred()
            self.calls.append((names[script.sha], keys, args, d))
            return d

        def run_all(script: Any, calls: list[tuple[int, list[str], list[object]]]) -> Deferred:
            each = DeferredList([run(script, keys[0], keys, args) for _, keys, args in calls],
                                consumeErrors=True)
            return each.addCallback(lambda done: [result for _, result in done])
        topology._run = run  # type: ignore[method-assign]
        topology._run_all = run_all  # type: ignore[method-assign]


def test_pings_of_devices_with_a_deadline_are_one_call_per_slot_and_no_arming():
    topology = cluster_topology()
    redis = ScriptedCluster(topology)
    pings = [(Ping("alice", 1, "0", "c"), False), (Ping("bob", 2, "0", "c"), False)]
    answer = results([topology.store(pings, 60, 0)])
    assert [name for name, *_ in redis.calls] == ["ping", "ping"]  # two slots, sent at once
    for _, _, args, d in redis.calls:
        assert args[2] == ""  # not armed: a device with no deadline comes back
        d.callback([STORED, 0])  # then the changes it recorded: none
    assert answer == [[(STORED, None), (STORED, None)]]


def test_a_device_with_no_deadline_is_armed_then_stored_in_order():
    topology = cluster_topology()
    redis = ScriptedCluster(topology)
    pings = [(Ping("alice", 1, "0", "new"), False), (Ping("alice", 2, "1", "old"), False)]
    answer = results([topology.store(pings, 60, 0)])
    (_, _, _, first), = redis.calls
    first.callback([NEEDS_ARM, NEEDS_ARM, 0])  # the second waits behind the first, in order
    assert [name for name, *_ in redis.calls] == ["ping", "arm"]
    redis.calls[1][3].callback("1000.000000")
    name, _, args, stored = redis.calls[2]
    assert name == "ping" and args[2] == "970.000000"  # refused if run after half a timeout
    assert args[4:-1:6] == ["alice", "alice"] and args[7::6] == ["new", "old"]
    stored.callback([CAME_ONLINE, STORED, 4])  # online, device_online; status, device_online
    assert answer == [[(CAME_ONLINE, None), (STORED, None)]]
    assert topology.change_feed.changes_recorded == 4


def test_a_user_s_later_pings_wait_for_their_earlier_ones():
    topology = cluster_topology()
    redis = ScriptedCluster(topology)
    first = results([topology.store([(Ping("alice", 1, "0", "new"), False)], 60, 0)])
    later = results([topology.store([(Ping("alice", 2, "1", "old"), False),
                                     (Ping("bob", 2, "1", "c"), False)], 60, 0)])
    # bob goes at once; alice's later ping waits for her first to be stored.
    assert [args[4] for _, _, args, _ in redis.calls] == ["alice", "bob"]
    redis.calls[1][3].callback([STORED, 1])
    redis.calls[0][3].callback([NEEDS_ARM, 0])
    redis.calls[2][3].callback("1000.000000")  # arm
    assert [args[4] for _, _, args, _ in redis.calls[3:]] == ["alice"]
    assert redis.calls[3][2][7] == "new"
    redis.calls[3][3].callback([CAME_ONLINE, 2])
    assert first == [[(CAME_ONLINE, None)]]
    assert [args[7] for _, _, args, _ in redis.calls[4:]] == ["old"]
    redis.calls[4][3].callback([STORED, 2])
    assert later == [[(STORED, None), (STORED, None)]]
