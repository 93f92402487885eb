"""The Redis store against a real redis-server, in the test's own reactor."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ClientCreator
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from txredisapi import MonitorProtocol

from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.presence import Ping, Presence, UserState
from heartbeat.core.store_contract import StoreUnavailable
from heartbeat.daemon.config import load_settings
from heartbeat.daemon.tap import build_service
from heartbeat.store.memory import MemoryStore
from heartbeat.store.redis.store import RedisStore
from heartbeat.store.redis.tuning import READ_CHUNK
from tests.helpers.processes import RedisServer, free_port
from tests.helpers.redis_stores import started, until


def state(ping: Ping) -> UserState:
    """What a store reads back for a user whose one device sent ``ping``."""
    return UserState(Presence(ping.userid, ping.time, ping.status),
                     {ping.clientid: Presence(ping.userid, ping.time, ping.status, True,
                                              ping.clientid)})


def numsub(redis_server: RedisServer, channel: str) -> int:
    return int(redis_server.command("PUBSUB", "NUMSUB", channel).split()[1])


@pytest_twisted.ensureDeferred
async def test_ping_is_stored_as_a_hash_and_reaches_another_instance(make_redis_store, redis_server):
    sender = await started(make_redis_store())
    receiver = await started(make_redis_store())
    await receiver.subscribe("alice")
    await sender.ping(Ping("alice", 1700000000, "0 on a call"))
    assert redis_server.command("HGETALL", "heartbeat:alice").split(b"\n")[:4] == [
        b"time", b"1700000000", b"status", b"0 on a call"]
    await until(lambda: receiver.listener.pings)
    assert receiver.listener.pings == [Presence("alice", 1700000000, "0 on a call")]
    # The sender watches nobody, so it hears nothing.
    assert sender.listener.pings == []
    assert await sender.get(["alice", "bob", "alice"]) == {
        "alice": state(Ping("alice", 1700000000, "0 on a call")), "bob": None}
    assert await sender.get([]) == {}


class Monitor(MonitorProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def messageReceived(self, message: str) -> None:
        self.lines.append(message)


@pytest_twisted.ensureDeferred
async def test_a_ping_is_one_script_call_that_falls_back_to_eval(make_redis_store, redis_server):
    store = await started(make_redis_store())
    monitor = await ClientCreator(reactor, Monitor).connectTCP("127.0.0.1", redis_server.port)
    # Written raw: txredisapi's monitor() leaves a reply waiting forever.
    monitor.transport.write(b"MONITOR\r\n")
    await until(lambda: monitor.lines)
    await store.ping(Ping("alice", 1, "a"))  # a fresh server knows no script
    await store.ping(Ping("alice", 2, "b"))
    redis_server.command("SCRIPT", "FLUSH")
    await store.ping(Ping("alice", 3, "c"))
    redis_server.command("ECHO", "done")
    await until(lambda: any('"done"' in line for line in monitor.lines))
    monitor.transport.loseConnection()

    from_client = [line.split("] ", 1)[1].split(" ")[0] for line in monitor.lines
                   if "heartbeat:alice" in line and "lua]" not in line]
    from_script = [line.split("] ", 1)[1].split(" ")[0] for line in monitor.lines
                   if "heartbeat:alice" in line and "lua]" in line]
    # One command per ping; the writes and PUBLISH only ever run inside the script
    # (the first ping also counts the user online).
    assert from_client == ['"EVALSHA"', '"EVAL"', '"EVALSHA"', '"EVALSHA"', '"EVAL"']
    # (HGET: the status before, for the change feed's rule; HLEN: a new device, for
    # MAX_DEVICES_PER_USER.)
    again = ['"HGET"', '"HSET"', '"HSET"', '"SADD"', '"PUBLISH"']
    first = ['"HGET"', '"HSET"', '"HSET"', '"HLEN"', '"SADD"', '"SCARD"', '"PUBLISH"']
    assert from_script == first + again * 2
    assert await store.get(["alice"]) == {"alice": state(Ping("alice", 3, "c"))}


@pytest_twisted.ensureDeferred
async def test_gets_of_one_reactor_turn_are_one_script_call(make_redis_store, redis_server):
    store = await started(make_redis_store())
    await store.ping(Ping("alice", 1, "a"))
    await store.ping(Ping("bob", 2, "b"))
    await store.get(["warm-up"])  # the script is known from here on
    monitor = await ClientCreator(reactor, Monitor).connectTCP("127.0.0.1", redis_server.port)
    monitor.transport.write(b"MONITOR\r\n")
    await until(lambda: monitor.lines)
    first, second, third = store.get(["alice"]), store.get(["bob", "alice"]), store.get(["carol"])
    assert await first == {"alice": state(Ping("alice", 1, "a"))}
    assert await second == {"bob": state(Ping("bob", 2, "b")), "alice": state(Ping("alice", 1, "a"))}
    assert await third == {"carol": None}
    redis_server.command("ECHO", "done")
    await until(lambda: any('"done"' in line for line in monitor.lines))
    monitor.transport.loseConnection()
    calls = [line for line in monitor.lines if '"EVALSHA"' in line]
    assert len(calls) == 1
    assert all(f'"heartbeat:{user}"' in calls[0] for user in ("alice", "bob", "carol"))


@pytest_twisted.ensureDeferred
async def test_pings_of_one_reactor_turn_are_one_script_call_in_order(make_redis_store, redis_server):
    store = await started(make_redis_store())
    await store.subscribe("alice")
    await store.ping(Ping("warm-up", 1, "0"))  # the script is known from here on
    monitor = await ClientCreator(reactor, Monitor).connectTCP("127.0.0.1", redis_server.port)
    monitor.transport.write(b"MONITOR\r\n")
    await until(lambda: monitor.lines)
    pings = [Ping("alice", 2, "a"), Ping("bob", 2, "b"), Ping("alice", 3, "c")]
    await gatherResults([store.ping(ping) for ping in pings])
    redis_server.command("ECHO", "done")
    await until(lambda: any('"done"' in line for line in monitor.lines))
    monitor.transport.loseConnection()
    calls = [line for line in monitor.lines if '"EVALSHA"' in line]
    assert len(calls) == 1 and calls[0].count('"heartbeat:alice"') == 2
    await until(lambda: len(store.listener.pings) == 2)
    assert store.listener.pings == [Presence("alice", 2, "a"), Presence("alice", 3, "c")]
    assert await store.get(["alice", "bob"]) == {"alice": state(pings[2]), "bob": state(pings[1])}


@pytest_twisted.ensureDeferred
async def test_pings_that_hide_in_one_batch_take_the_device_offline_once(make_redis_store):
    store = await started(make_redis_store(hiding=Hiding.of(("3",))))
    await store.subscribe("alice")
    await store.subscribe("bob")
    pings = [Ping("alice", 2, "0", "c"), Ping("alice", 3, "3", "c"), Ping("bob", 4, "3", "c"),
             Ping("alice", 5, "3", "c")]
    await gatherResults([store.ping(ping) for ping in pings])
    await until(lambda: len(store.listener.pings) == 2)
    await deferLater(reactor, 0.2)  # room for anything more to arrive: nothing may
    assert store.listener.pings == [Presence("alice", 2, "0"), Presence("alice", 2, "0", False)]
    assert store.listener.devices == [Presence("alice", 2, "0", True, "c"),
                                      Presence("alice", 2, "0", False, "c")]
    assert store.offline_transitions == 1
    assert await store.get(["alice", "bob"]) == {"alice": UserState(
        Presence("alice", 2, "0", False), {"c": Presence("alice", 2, "0", False, "c")}),
        "bob": None}


@pytest_twisted.ensureDeferred
async def test_a_ping_redis_refuses_fails_alone(make_redis_store, redis_server):
    store = await started(make_redis_store())
    redis_server.command("SET", "heartbeat:bob", "not-a-hash")
    alice, bob, carol = (store.ping(Ping(user, 5, "1")) for user in ("alice", "bob", "carol"))
    await alice
    with pytest.raises(StoreUnavailable):
        await bob
    await carol
    assert await store.get(["alice", "bob", "carol"]) == {
        "alice": state(Ping("alice", 5, "1")), "bob": None, "carol": state(Ping("carol", 5, "1"))}
    assert redis_server.command("GET", "heartbeat:bob") == b"not-a-hash\n"


@pytest_twisted.ensureDeferred
async def test_prefix_names_keys_and_channels(make_redis_store, redis_server):
    store = await started(make_redis_store(prefix="hb/test/"))
    await store.subscribe("alice")
    # The user's channel, and the instances' control channel (disconnect), held from the start.
    assert sorted(redis_server.command("PUBSUB", "CHANNELS").split()) == [
        b"hb/test/alice", b"{hb/test/}:control"]
    await store.ping(Ping("alice", 5, "1"))
    # The compat key, then the user's and the deadline partition's keys, the change
    # feed, its epoch and the list of the user's entries in it, all prefixed.
    keys = redis_server.command("KEYS", "*").split()
    assert b"hb/test/alice" in keys and b"{hb/test/changes}" in keys and len(keys) == 8
    assert b"{hb/test/changes}:of:alice" in keys
    assert all(key.startswith((b"hb/test/", b"{hb/test/")) for key in keys)
    await until(lambda: store.listener.pings)
    assert store.listener.pings == [Presence("alice", 5, "1")]


@pytest.mark.parametrize("form, db", [
    ("127.0.0.1:{port}", "0"),
    (":{port}", "0"),
    ("redis://127.0.0.1:{port}/3", "3"),
])
@pytest_twisted.ensureDeferred
async def test_every_redis_form_reaches_its_database(make_redis_store, redis_server, form, db):
    store = await started(make_redis_store(form.format(port=redis_server.port)))
    await store.ping(Ping("alice", 7, "2"))
    assert redis_server.command("-n", db, "HGET", "heartbeat:alice", "status") == b"2\n"


@pytest_twisted.ensureDeferred
async def test_password_and_database_from_a_url(make_redis_store, tmp_path):
    server = RedisServer(tmp_path, password="s@cret").start()
    try:
        store = await started(make_redis_store(f"redis://:s%40cret@127.0.0.1:{server.port}/2"))
        await store.subscribe("alice")
        await store.ping(Ping("alice", 9, "3"))
        await until(lambda: store.listener.pings)
        assert server.command("-n", "2", "HGET", "heartbeat:alice", "time") == b"9\n"
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_is_logged_and_pings_get_503(make_redis_store, tmp_path):
    server = RedisServer(tmp_path, password="right").start()
    errors: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "heartbeat.store.redis.link":
            errors.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        store = make_redis_store(f"redis://:wrong@127.0.0.1:{server.port}")
        await until(lambda: errors)
        assert "could not auth" in errors[0] and "REDIS" in errors[0]
        assert not store.available
        with pytest.raises(StoreUnavailable):
            await store.ping(Ping("alice", 1, "0"))
    finally:
        globalLogPublisher.removeObserver(observe)
        server.stop()


@pytest_twisted.ensureDeferred
async def test_channels_follow_subscribe_and_unsubscribe(make_redis_store, redis_server):
    store = await started(make_redis_store())
    await store.subscribe("alice")
    assert numsub(redis_server, "heartbeat:alice") == 1
    assert redis_server.command("PUBSUB", "NUMPAT") == b"0\n"
    await store.unsubscribe("alice")
    assert numsub(redis_server, "heartbeat:alice") == 0


@pytest_twisted.ensureDeferred
async def test_redis_down_at_start_then_up(make_redis_store, tmp_path):
    port = free_port()
    store = make_redis_store(f"127.0.0.1:{port}")
    assert not store.available
    with pytest.raises(StoreUnavailable):
        await store.ping(Ping("alice", 1, "0"))
    with pytest.raises(StoreUnavailable):
        await store.get(["alice"])
    subscribed: Deferred[None] = store.subscribe("alice")
    assert not subscribed.called
    server = RedisServer(tmp_path, port=port).start()
    try:
        await subscribed
        assert numsub(server, "heartbeat:alice") == 1
        await until(lambda: store.available)
        await store.ping(Ping("alice", 2, "1"))
        await until(lambda: store.listener.pings)
        assert store.listener.pings == [Presence("alice", 2, "1")]
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_after_redis_restarts_channels_are_resubscribed_and_hub_resyncs(
        make_redis_store, redis_server):
    watcher = await started(make_redis_store())
    await watcher.subscribe("alice")
    await watcher.subscribe("bob")
    redis_server.stop()
    await until(lambda: not watcher.available)
    # The hub stops trusting what the bus last said about anyone.
    await until(lambda: watcher.listener.losses == 1)
    with pytest.raises(StoreUnavailable):
        await watcher.ping(Ping("alice", 1, "0"))
    resyncs = watcher.listener.resyncs
    redis_server.start()
    await until(lambda: watcher.available and watcher.listener.resyncs > resyncs)
    assert numsub(redis_server, "heartbeat:alice") == 1
    assert numsub(redis_server, "heartbeat:bob") == 1
    sender = await started(make_redis_store())
    await sender.ping(Ping("bob", 2, "1"))
    await until(lambda: watcher.listener.pings)
    assert watcher.listener.pings == [Presence("bob", 2, "1")]


def test_the_redis_setting_selects_the_redis_store():
    def store_of(options: dict[str, str]):
        settings = load_settings(options, environ={}, dotenv={})
        return build_service(settings, reactor, endpoint=None).store

    assert isinstance(store_of({"database": ":memory:"}), MemoryStore)
    store = store_of({"redis": ":6379", "redis-prefix": "x:"})
    assert isinstance(store, RedisStore)
    # Wired to connect when the service starts, not before.
    assert store.parent is not None and store.available is False


def test_replicas_count_what_wait_answered_and_only_enough_is_enough():
    from heartbeat.store.redis.replicas import Replicas

    replicas = Replicas(2)
    assert replicas.enough(2) and replicas.enough("3")
    assert not replicas.enough(1)
    assert not replicas.enough(None)  # WAIT failed or answered something else
    assert replicas.enough(2)  # back again


@pytest_twisted.ensureDeferred
async def test_a_resync_of_20000_users_is_read_in_short_script_calls(make_redis_store, redis_server):
    """Redis runs one script at a time: one read of every watched user would stall
    every other instance's pings for its whole length, so reads go in chunks."""
    store = await started(make_redis_store())
    users = [f"user{n}" for n in range(20000)]
    for first in range(0, len(users), 500):
        await gatherResults([store.ping(Ping(userid, 1700000000, "0 here", "phone"))
                             for userid in users[first:first + 500]])
    await store.get(["warm-up"])  # the script is known from here on
    monitor = await ClientCreator(reactor, Monitor).connectTCP("127.0.0.1", redis_server.port)
    monitor.transport.write(b"MONITOR\r\n")
    await until(lambda: monitor.lines)
    states = await store.get(users)
    redis_server.command("ECHO", "done")
    await until(lambda: any('"done"' in line for line in monitor.lines))
    monitor.transport.loseConnection()
    assert len(states) == 20000 and states["user19999"] == state(
        Ping("user19999", 1700000000, "0 here", "phone"))
    # Per call: "EVALSHA" sha numkeys; each user is three keys.
    calls = [line.split("] ", 1)[1].split(" ") for line in monitor.lines
             if '"EVALSHA"' in line and '"heartbeat:user' in line]
    users_per_call = [int(call[2].strip('"')) // 3 for call in calls]
    assert sum(users_per_call) == 20000
    assert max(users_per_call) <= READ_CHUNK
