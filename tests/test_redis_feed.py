"""The change feed on a real redis-server (SPEC §8): the scripts record what the rule says.

The same transitions as ``test_change_feed``'s in-process stores, through the
Redis store's Lua; positions, retention and waits against Redis's own clock.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from heartbeat.core.changes import Position, PositionGone
from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.presence import Ping
from tests.helpers.redis_stores import Recorder, started, until


def kinds(page) -> list[tuple]:
    return [(c.type, c.userid, c.clientid, c.status, c.online) for c in page.changes]


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
    for step, expected in steps:
        await step()
        page = await feed.changes(position, 1000)
        assert kinds(page) == expected
        position = page.next
    # bob's deadline passes: the sweep records his device, then him, offline, once.
    await until(lambda: store.online_users() == 0, timeout=10)
    page = await feed.changes(position, 1000)
    assert kinds(page) == [("device_offline", "bob", "", "2", False),
                           ("offline", "bob", None, "2", False)]
    everything = await feed.changes(None, 1000)
    ids = [c.id for c in everything.changes]
    assert len(set(ids)) == len(ids) == 11
    assert [str(p) for p in everything.positions][-1] == str(page.positions[-1])
    assert [Position.parse(c.id) for c in everything.changes] == list(everything.positions)
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
        make_redis_store, redis_server):
    sender, hearer = await started(make_redis_store()), await started(make_redis_store())
    hearer.listener = told = Told()
    await hearer.subscribe("alice")
    feed = sender.change_feed
    start = await feed.position()
    await sender.ping(Ping("alice", 1, "0", "web"))  # online + device_online
    await sender.ping(Ping("alice", 2, "0", "web"))  # no change
    await sender.ping(Ping("alice", 3, "1", "web"))  # status
    await sender.leave("alice", "web")  # device_offline, then offline
    await until(lambda: len(told.told) == 8)
    page = await feed.changes(start, 100)
    at = {(c.type, c.clientid): str(p) for c, p in zip(page.changes, page.positions)}
    assert told.told == [
        (None, "0", at[("online", None)], True), ("web", "0", at[("device_online", "web")], True),
        (None, "0", None, True), ("web", "0", None, True),
        (None, "1", at[("status", None)], True), ("web", "1", None, True),
        ("web", "1", at[("device_offline", "web")], True), (None, "1", at[("offline", None)], True),
    ]
    # A message another service publishes (the compat fields only) still arrives,
    # judged by nobody: the hub applies its own rule.
    redis_server.command("PUBLISH", "heartbeat:alice",
                         '{"userid":"alice","time":9,"status":"2","online":true}')
    await until(lambda: len(told.told) == 9)
    assert told.told[-1] == (None, "2", None, None)
    # An erasure's event carries its erased change's position.
    await sender.erase("alice")
    await until(lambda: len(told.told) == 10)
    [erased] = (await feed.changes(page.next, 100)).positions
    assert told.told[-1] == (None, "", str(erased), True)


@pytest_twisted.ensureDeferred
async def test_pages_positions_retention_and_strangers(make_redis_store, redis_server):
    store = await started(make_redis_store(changes_retention=2))
    feed = store.change_feed
    start = await feed.position()
    for n in range(3):
        await store.ping(Ping(f"u{n}", 1, "0"))
    first = await feed.changes(start, 4)
    assert [c.userid for c in first.changes] == ["u0", "u0", "u1", "u1"]
    rest = await feed.changes(first.next, 100)
    assert [c.userid for c in rest.changes] == ["u2", "u2"]
    only = await feed.changes(start, 100, {"u1"})
    assert [c.type for c in only.changes] == ["online", "device_online"]
    for stranger in (Position("zz99", rest.next.marks), Position(rest.next.epoch, ("99999999999999-0",))):
        with pytest.raises(PositionGone):
            await feed.changes(stranger, 10)
    await deferLater(reactor, 2.1, lambda: None)
    with pytest.raises(PositionGone):
        await feed.changes(start, 10)
    assert (await feed.changes(None, 10)).changes == ()  # all past retention
    # A flushed Redis is a new feed: its positions from before are gone.
    redis_server.command("FLUSHALL")
    with pytest.raises(PositionGone):
        await feed.changes(rest.next, 10)


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


def test_status_cursor_and_changes_through_the_daemon_across_a_restart(start_daemon, redis_server):
    import json
    import signal

    from tests.helpers.clients import get, post_ping

    auth = {"Authorization": "Bearer k1"}
    env = {"REDIS": redis_server.address, "API_KEY": "k1"}
    daemon = start_daemon(env=env)
    assert post_ping(daemon.port, "0", userid="alice")[0] == 200
    code, headers, body = get(daemon.port, "/status?user=alice&user=bob")
    cursor = headers["heartbeat-cursor"]
    assert json.loads(body)["alice"]["online"] is True
    assert post_ping(daemon.port, "1", userid="alice")[0] == 200
    assert post_ping(daemon.port, "0", userid="bob")[0] == 200
    daemon.stop(signal.SIGKILL)
    again = start_daemon(env=env, port=daemon.port)
    code, _, body = get(again.port, f"/changes?after={cursor}", headers=auth)
    page = json.loads(body)
    assert code == 200
    assert [(c["type"], c["userid"]) for c in page["changes"]] == [
        ("status", "alice"), ("online", "bob"), ("device_online", "bob")]
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
    assert [c["type"] for c in by_id] == ["online", "device_online"]


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
