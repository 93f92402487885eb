"""The change feed on a real redis-server and a real Cluster (SPEC §8): the scripts
record what the rule says.

The same transitions as ``test_change_feed``'s in-process stores, through the
Redis store's Lua; positions, retention and waits against Redis's own clock.
Each store test runs on one Redis, then on a Cluster, where each slot keeps its
own stream and a read merges them.
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from heartbeat.core.changes import Position, PositionGone
from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.presence import Ping
from heartbeat.core.store_contract import StoreUnavailable
from heartbeat.store.redis.feed import slot_streams
from heartbeat.store.redis.keys import slot
from tests.helpers.backend_calls import (
    KEY,
    FeedFollower,
    apply,
    changes_since,
    from_status,
)
from tests.helpers.claims import claim_header
from tests.helpers.clients import SSEClient, get, post_ping
from tests.helpers.redis_cluster import fresh_user
from tests.helpers.redis_stores import Recorder, started, until
from tests.helpers.waiting import wait_for


@pytest.fixture
def redis(module_redis):
    """One Redis, then a Cluster, empty."""
    module_redis.flush()
    return module_redis


@pytest.fixture
def redis_address(redis) -> str:
    """Where ``make_redis_store``'s stores connect: that Redis, or that Cluster."""
    return redis.url


def kinds(page) -> list[tuple]:
    return [(c.type, c.userid, c.clientid, c.status, c.online) for c in page.changes]


async def read(feed, after, limit=1000, userids=None):
    """``feed.changes``, once the millisecond of a change just made has passed: a
    Cluster's feed shows a change once every master's clock is past it."""
    await deferLater(reactor, 0.005, lambda: None)
    return await feed.changes(after, limit, userids)


@pytest_twisted.ensureDeferred
async def test_the_scripts_record_each_transitions_changes_and_a_repeat_none(make_redis_store):
    store = await started(make_redis_store(timeout=1, hiding=Hiding.of(("3",))))
    feed = store.change_feed
    steps = [
        (lambda: store.ping(Ping("alice", 1, "0", "web")),
         [("online", "alice", None, "0", True), ("device_online", "alice", "web", "0", True)]),
        (lambda: store.ping(Ping("alice", 2, "0", "web")), []),
        (lambda: store.ping(Ping("alice", 3, "1", "phone")),
         [("status", "alice", None, "1", True), ("device_online", "alice", "phone", "1", True)]),
        (lambda: store.leave("alice", "web"), [("device_offline", "alice", "web", "0", False)]),
        (lambda: store.leave("alice", "web"), []),
        (lambda: store.ping(Ping("alice", 5, "3", "phone")),
         [("device_offline", "alice", "phone", "1", False), ("offline", "alice", None, "1", False)]),
        (lambda: store.ping(Ping("alice", 6, "3", "phone")), []),
        (lambda: store.ping(Ping("bob", 6, "2")),
         [("online", "bob", None, "2", True), ("device_online", "bob", "", "2", True)]),
    ]
    position = await feed.position()
    recorded = 0
    for step, expected in steps:
        await step()
        page = await read(feed, position)
        assert kinds(page) == expected
        # Each script's answer counts the changes it recorded (/metrics).
        recorded += len(expected)
        assert store.changes_recorded == recorded
        position = page.next
    # bob's deadline passes: the sweep records his device, then him, offline, once.
    await until(lambda: store.online_users() == 0, timeout=10)
    page = await read(feed, position)
    assert kinds(page) == [("device_offline", "bob", "", "2", False),
                           ("offline", "bob", None, "2", False)]
    everything = await read(feed, None)
    ids = [c.id for c in everything.changes]
    assert len(set(ids)) == len(ids) == 11 == store.changes_recorded
    # A change's id is its position's text, the epoch's ``_`` made a ``-``; it reads
    # back as that position.
    assert ids == [p.change_id for p in everything.positions]
    assert [Position.parse(i) for i in ids] == list(everything.positions)
    assert [str(p) for p in everything.positions][-1] == str(page.positions[-1])
    assert (await feed.changes(everything.next, 10)).changes == ()


class Told(Recorder):
    """A listener that keeps what the bus told of each change: its view, position, judged."""

    def __init__(self) -> None:
        super().__init__()
        self.told: list[tuple[str | None, str, str | None, bool | None]] = []

    def deliver(self, change, position=None, judged=None) -> None:
        self.told.append((change.clientid, change.status,
                          None if position is None else str(position), judged))


@pytest_twisted.ensureDeferred
async def test_the_bus_carries_each_changes_feed_position_and_another_services_none(
        make_redis_store, redis):
    sender, hearer = await started(make_redis_store()), await started(make_redis_store())
    hearer.listener = told = Told()
    await hearer.subscribe("alice")
    # The hub reads a position as streams open; a Cluster's bus messages are completed
    # with the epoch it read.
    await hearer.change_feed.position()
    feed = sender.change_feed
    start = await feed.position()
    await sender.ping(Ping("alice", 1, "0", "web"))  # online + device_online
    await sender.ping(Ping("alice", 2, "0", "web"))  # no change
    await sender.ping(Ping("alice", 3, "1", "web"))  # status
    await sender.leave("alice", "web")  # device_offline, then offline
    await until(lambda: len(told.told) == 8)
    # Each instance counts the changes it recorded, not those it heard.
    assert (sender.changes_recorded, hearer.changes_recorded) == (5, 0)
    page = await read(feed, start, 100)
    at = {(c.type, c.clientid): str(p) for c, p in zip(page.changes, page.positions)}
    assert told.told == [
        (None, "0", at[("online", None)], True), ("web", "0", at[("device_online", "web")], True),
        (None, "0", None, True), ("web", "0", None, True),
        (None, "1", at[("status", None)], True), ("web", "1", None, True),
        ("web", "1", at[("device_offline", "web")], True), (None, "1", at[("offline", None)], True),
    ]
    # A message another service publishes (the compat fields only) still arrives,
    # judged by nobody: the hub applies its own rule.
    redis.publish("heartbeat:alice", '{"userid":"alice","time":9,"status":"2","online":true}')
    await until(lambda: len(told.told) == 9)
    assert told.told[-1] == (None, "2", None, None)
    # An erasure's event carries its erased change's position.
    await sender.erase("alice")
    await until(lambda: len(told.told) == 10)
    [erased] = (await read(feed, page.next, 100)).positions
    assert told.told[-1] == (None, "", str(erased), True)
    assert (sender.changes_recorded, hearer.changes_recorded) == (6, 0)


def by_user(changes) -> dict[str, list[str]]:
    """Each user's change types, in the order read (the feed's order is each user's)."""
    users: dict[str, list[str]] = {}
    for change in changes:
        users.setdefault(change.userid, []).append(change.type)
    return users


@pytest_twisted.ensureDeferred
async def test_pages_positions_retention_and_strangers(make_redis_store, redis):
    store = await started(make_redis_store(changes_retention=2))
    feed = store.change_feed
    start = await feed.position()
    for n in range(3):
        await store.ping(Ping(f"u{n}", 1, "0"))
    first = await read(feed, start, 4)
    assert len(first.changes) == 4 and first.next == first.positions[-1]
    rest = await feed.changes(first.next, 100)
    assert by_user(first.changes + rest.changes) == {
        f"u{n}": ["online", "device_online"] for n in range(3)}
    only = await feed.changes(start, 100, {"u1"})
    assert [c.type for c in only.changes] == ["online", "device_online"]
    ahead = ("99999999999999-0", *rest.next.marks[1:])
    for stranger in (Position("zz99", rest.next.marks), Position(rest.next.epoch, ahead),
                     Position(rest.next.epoch, ("1", "2", "3"))):
        with pytest.raises(PositionGone):
            await feed.changes(stranger, 10)
    await deferLater(reactor, 2.1, lambda: None)
    with pytest.raises(PositionGone):
        await feed.changes(start, 10)
    assert (await feed.changes(None, 10)).changes == ()  # all past retention
    # A flushed Redis is a new feed: its positions from before are gone.
    redis.flush()
    assert (await feed.position()).epoch != rest.next.epoch
    with pytest.raises(PositionGone):
        await feed.changes(rest.next, 10)


@pytest_twisted.ensureDeferred
async def test_many_users_changes_page_through_in_order_each_once(make_redis_store):
    store = await started(make_redis_store())
    feed = store.change_feed
    start = await feed.position()
    users = [f"many{n}" for n in range(24)]  # in every master's slots, on a Cluster
    for status in ("0", "1"):
        for userid in users:
            await store.ping(Ping(userid, 1, status))
    await deferLater(reactor, 0.005, lambda: None)
    seen, positions, after = [], [], start
    while True:
        page = await feed.changes(after, 7)
        seen += page.changes
        positions += page.positions
        if not page.changes:
            break
        after = page.next
    assert by_user(seen) == {userid: ["online", "device_online", "status"] for userid in users}
    assert [p.order for p in positions] == sorted({p.order for p in positions})
    assert len({c.id for c in seen}) == len(seen) == 3 * len(users)
    few = await feed.changes(start, 1000, {"many3", "many17"})
    assert by_user(few.changes) == {u: ["online", "device_online", "status"]
                                    for u in ("many3", "many17")}


@pytest_twisted.ensureDeferred
async def test_an_erasure_leaves_only_its_erased_change(make_redis_store):
    store = await started(make_redis_store())
    feed = store.change_feed
    start = await feed.position()
    await store.ping(Ping("alice", 1, "0", "web"))
    await store.ping(Ping("alice", 2, "1", "phone"))
    await store.ping(Ping("bob", 2, "0"))
    await store.erase("alice")
    page = await read(feed, start)
    assert by_user(page.changes) == {"alice": ["erased"],
                                     "bob": ["online", "device_online"]}


@pytest_twisted.ensureDeferred
async def test_a_waiter_wakes_on_a_change_another_instance_made(make_redis_store):
    one, other = await started(make_redis_store()), await started(make_redis_store())
    position = await one.change_feed.position()
    waiting = one.change_feed.wait(position)
    await deferLater(reactor, 0.3, lambda: None)
    assert not waiting.called
    await other.ping(Ping("alice", 1, "0"))
    await until(lambda: waiting.called, timeout=5)
    again = one.change_feed.wait(await one.change_feed.position())
    again.cancel()


@pytest_twisted.ensureDeferred
async def test_one_instance_holds_a_urls_claim_and_only_it_records_progress(make_redis_store):
    url = "https://a.example/h"
    one, other = await started(make_redis_store()), await started(make_redis_store())
    assert await one.change_feed.delivered(url) is None
    assert await one.change_feed.claim(url, "one", 0.3)
    assert not await other.change_feed.claim(url, "other", 0.3)
    assert await one.change_feed.claim(url, "one", 0.3)  # renewed
    position = await one.change_feed.position()
    assert await one.change_feed.set_delivered(url, position, "one")
    assert not await other.change_feed.set_delivered(url, Position(position.epoch, ("1-0",)),
                                                     "other")
    assert await other.change_feed.delivered(url) == position
    await deferLater(reactor, 0.4, lambda: None)  # "one" died: its claim lapses
    assert await other.change_feed.claim(url, "other", 0.3)
    assert not await one.change_feed.set_delivered(url, position, "one")


def test_status_cursor_and_changes_through_the_daemon_across_a_restart(start_daemon, redis):
    import json
    import signal

    from tests.helpers.clients import get, post_ping

    auth = {"Authorization": "Bearer k1"}
    env = {"REDIS": redis.url, "API_KEY": "k1"}
    daemon = start_daemon(env=env)
    assert post_ping(daemon.port, "0", userid="alice")[0] == 200
    code, headers, body = get(daemon.port, "/status?user=alice&user=bob")
    cursor = headers["heartbeat-cursor"]
    assert json.loads(body)["alice"]["online"] is True
    assert post_ping(daemon.port, "0", userid="alice")[0] == 200
    assert post_ping(daemon.port, "1", userid="alice")[0] == 200
    assert post_ping(daemon.port, "0", userid="bob")[0] == 200
    # online + device_online, nothing, status, then bob's two.
    recorded = "heartbeat_changes_recorded_total 5.0\n"
    assert recorded in get(daemon.port, "/metrics")[2].decode()
    daemon.stop(signal.SIGKILL)
    again = start_daemon(env=env, port=daemon.port)
    code, _, body = get(again.port, f"/changes?after={cursor}", headers=auth)
    page = json.loads(body)
    assert code == 200
    assert [(c["type"], c["userid"]) for c in page["changes"]] == [
        ("status", "alice"), ("online", "bob"), ("device_online", "bob")]
    # Resumed from where the page ended: only what came since.
    assert "heartbeat_changes_recorded_total 0.0\n" in get(again.port, "/metrics")[2].decode()
    assert post_ping(again.port, "2", userid="bob")[0] == 200
    code, _, body = get(again.port, f"/changes?after={page['next']}&wait=5", headers=auth)
    assert code == 200
    assert [(c["type"], c["userid"], c["status"]) for c in json.loads(body)["changes"]] == [
        ("status", "bob", "2")]
    assert "heartbeat_changes_recorded_total 1.0\n" in get(again.port, "/metrics")[2].decode()
    # The same as a stream, resumed by Last-Event-ID from the cursor.
    resumed = SSEClient(again.port, "/changes", headers={**auth, "Last-Event-ID": cursor})
    assert [resumed.event() for _ in range(4)] == page["changes"] + json.loads(body)["changes"]
    resumed.no_event(0.3)
    resumed.close()
    assert get(again.port, "/changes?after=zz99_1-0", headers=auth)[0] == 410
    # A change's id resumes as its position does.
    _, _, body = get(again.port, f"/changes?after={cursor}&limit=1", headers=auth)
    first = json.loads(body)
    [change] = first["changes"]
    code, _, body = get(again.port, f"/changes?after={change['id']}", headers=auth)
    by_id = json.loads(body)["changes"]
    assert code == 200 and change["id"] != first["next"]
    _, _, body = get(again.port, f"/changes?after={first['next']}", headers=auth)
    assert by_id == json.loads(body)["changes"]  # not "next": the tip moves with Redis time
    assert [(c["type"], c["userid"]) for c in by_id] == [
        ("online", "bob"), ("device_online", "bob"), ("status", "bob")]
    # The cursor is stale to an instance that keeps changes for a second; and a flushed
    # Redis is another feed, whose positions are gone however recent.
    brief = start_daemon(env={**env, "CHANGES_RETENTION": "1"})
    wait_for(lambda: get(brief.port, f"/changes?after={cursor}", headers=auth)[0] == 410)
    redis.flush()
    code, _, body = get(again.port, f"/changes?after={page['next']}", headers=auth)
    assert code == 410 and json.loads(body)["error"]


@pytest_twisted.ensureDeferred
async def test_a_slot_migrating_is_read_where_its_stream_is_and_never_skipped(make_redis_store, redis):
    """A migrating slot's stream gone to the target is read there (ASK); while it can be
    read nowhere, a read returns nothing new rather than skip it."""
    cluster = redis.cluster
    if cluster is None:
        pytest.skip("slots migrate in a Cluster only")
    store = await started(make_redis_store())
    feed = store.change_feed
    start = await feed.position()
    moving = slot("heartbeat:mover")
    source = cluster.owner(moving)
    target = next(cluster.node(a) for a in cluster.masters() if a != source.address)
    source_id, target_id = cluster.node_id(source), cluster.node_id(target)
    await store.ping(Ping("mover", 1, "0"))
    others = [u for u in (f"stay{n}" for n in range(40))
              if cluster.owner(slot("heartbeat:" + u)) is not source][:4]
    for userid in others:
        await store.ping(Ping(userid, 1, "0"))
    everyone = {u: ["online", "device_online"] for u in ["mover", *others]}

    target.command("CLUSTER", "SETSLOT", str(moving), "IMPORTING", source_id)
    source.command("CLUSTER", "SETSLOT", str(moving), "MIGRATING", target_id)
    stream = slot_streams("heartbeat:")[moving]
    source.command("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", stream)
    assert by_user((await read(feed, start)).changes) == everyone

    # The target no longer imports: the stream can be read nowhere, so nothing is
    # returned, not even the change made since in another slot.
    target.command("CLUSTER", "SETSLOT", str(moving), "STABLE")
    await store.ping(Ping(others[0], 2, "1"))
    stuck = await read(feed, start)
    assert stuck.changes == () and stuck.next == start
    with pytest.raises(StoreUnavailable):
        await feed.changes(None, 10)

    target.command("CLUSTER", "SETSLOT", str(moving), "IMPORTING", source_id)
    everyone[others[0]].append("status")
    assert by_user((await read(feed, start)).changes) == everyone

    # The rest of the slot moves, and its next change is recorded on the target.
    while keys := source.command("CLUSTER", "GETKEYSINSLOT", str(moving), "10").split():
        source.command("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS",
                       *(k.decode() for k in keys))
    for node in cluster.alive():
        node.command("CLUSTER", "SETSLOT", str(moving), "NODE", target_id)
    await store.ping(Ping("mover", 2, "1"))
    everyone["mover"].append("status")
    page = await read(feed, start)
    assert by_user(page.changes) == everyone
    assert len({c.id for c in page.changes}) == len(page.changes)


def test_status_and_its_cursor_then_changes_reconstruct_every_user_under_concurrent_pings(
        start_daemon, redis):
    """SPEC §8's resync while two instances take pings and leaves of 30 users (on every
    node of a Cluster) from two threads: every ``/status`` read meanwhile, with the
    changes after its ``Heartbeat-Cursor``, gives every user's final state exactly; and a
    backend following ``/changes`` live (long polls) gets what a read afterwards gets."""
    env = {"REDIS": redis.url, "API_KEY": KEY}
    daemons = [start_daemon(env=env) for _ in range(2)]
    users = [fresh_user() for _ in range(30)]
    query = "/status?" + "&".join(f"user={u}" for u in users)

    def resync() -> tuple[dict, str]:
        code, headers, body = get(daemons[0].port, query)
        assert code == 200, body
        return from_status(json.loads(body)), headers["heartbeat-cursor"]

    start, cursor = resync()
    follower = FeedFollower(daemons[1].port, cursor)
    follower.start()

    def load(seed: int) -> None:
        chance = random.Random(seed)
        for _ in range(400):
            userid, clientid = chance.choice(users), chance.choice(("web", "phone"))
            headers = claim_header(userid, clientid)
            if chance.random() < 0.2:
                assert post_ping(daemons[seed].port, "", None, headers=headers,
                                 path="/leave")[0] == 200
            else:
                status = chance.choice("012")
                assert post_ping(daemons[seed].port, status, None, headers=headers)[0] == 200

    snapshots = []
    with ThreadPoolExecutor(2) as pool:
        loads = [pool.submit(load, seed) for seed in (0, 1)]
        while not all(f.done() for f in loads):
            snapshots.append(resync())
            time.sleep(0.1)
        for f in loads:
            f.result()
    followed = follower.stop()
    assert (follower.unavailable, follower.failed) == (0, [])
    final, _ = resync()
    assert len(snapshots) >= 3, len(snapshots)
    afterwards = changes_since(daemons[0].port, cursor)
    # The same changes, each user's in the same order (users may interleave differently).
    assert {u: [c for c in followed if c["userid"] == u] for u in users} == {
        u: [c for c in afterwards if c["userid"] == u] for u in users}

    def rebuilt(state: dict, changes: list[dict]) -> dict:
        for change in changes:
            if change["userid"] in users:
                apply(state, change)
        return state

    assert rebuilt(start, followed) == final
    for state, position in snapshots:
        assert rebuilt(state, changes_since(daemons[1].port, position)) == final


def test_the_feed_through_sentinel_continues_on_the_promoted_replica(start_daemon, tmp_path):
    import json

    from tests.helpers.clients import get, post_ping
    from tests.helpers.processes import RedisServer
    from tests.helpers.redis_ops import Sentinel
    from tests.helpers.waiting import wait_for

    auth = {"Authorization": "Bearer k"}
    master = RedisServer(tmp_path).start()
    # Two replicas: the promoted one still has one to WAIT for.
    replicas = [RedisServer(tmp_path, args=["--replicaof", "127.0.0.1", str(master.port)]).start()
                for _ in range(2)]
    sentinels = [Sentinel(tmp_path, master.port).start() for _ in range(3)]
    try:
        # Every Sentinel knows the replica (so it can promote it) and quorum holds.
        wait_for(lambda: all("OK" in s.command("SENTINEL", "CKQUORUM", "mymaster")
                             and len(s.command("SENTINEL", "REPLICAS", "mymaster")
                                     .split("\nname\n")) == 2
                             for s in sentinels), timeout=30)
        wait_for(lambda: master.command("INFO", "replication").count(b"state=online") == 2)
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
        daemon = start_daemon(env={"REDIS": f"redis+sentinel://{hosts}/mymaster",
                                   "REDIS_WAIT_REPLICAS": "1", "API_KEY": "k"})
        assert post_ping(daemon.port, "0", userid="alice")[0] == 200
        _, headers, _ = get(daemon.port, "/status?user=alice")
        cursor = headers["heartbeat-cursor"]
        assert post_ping(daemon.port, "1", userid="alice")[0] == 200
        master.proc.kill()
        master.proc.wait()
        wait_for(lambda: any(b"role:master" in r.command("INFO", "replication")
                             for r in replicas), timeout=30)
        wait_for(lambda: post_ping(daemon.port, "2", userid="alice")[0] == 200, timeout=30)
        code, _, body = get(daemon.port, f"/changes?after={cursor}", headers=auth)
        assert code == 200
        statuses = [c["status"] for c in json.loads(body)["changes"] if c["type"] == "status"]
        assert statuses == ["1", "2"]
    finally:
        for part in (*sentinels, *replicas, master):
            part.stop()
