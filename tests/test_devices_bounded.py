"""Devices are bounded (SPEC §3): MAX_DEVICES_PER_USER, and a device's cost without its siblings'."""

from __future__ import annotations

import time

from twisted.internet.task import Clock

from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.presence import Devices, Ping
from heartbeat.store.memory import MemoryStore
from tests.test_sqlite_store import Listener


def store_with(limit: int) -> tuple[MemoryStore, Clock, Listener]:
    clock = Clock()
    clock.advance(1_800_000_000)
    store = MemoryStore(clock, 60, max_devices=limit)
    listener = store.listener = Listener()
    store.subscribe("alice")
    return store, clock, listener


def devices_of(store: MemoryStore, userid: str = "alice") -> list[str]:
    return list(store.get([userid]).result[userid].devices)


def test_the_device_past_the_limit_forgets_the_least_recently_seen_offline_one_first():
    store, clock, listener = store_with(3)
    for device in ("a", "b", "c"):
        store.ping(Ping("alice", int(clock.seconds()), "1", device))
        clock.advance(1)
    store.ping(Ping("alice", int(clock.seconds()), "1", "a"))  # a is now the most recent
    store.leave("alice", "c")  # c, offline, is forgotten before the older online b
    store.ping(Ping("alice", int(clock.seconds()), "1", "d"))
    assert sorted(devices_of(store)) == ["a", "b", "d"]
    store.ping(Ping("alice", int(clock.seconds()), "1", "e"))  # all online: b, the oldest
    assert sorted(devices_of(store)) == ["a", "d", "e"]
    # b went offline first, as its device stream sees; the user stayed online.
    gone = [c for c in listener.changes if c.clientid == "b" and not c.online]
    assert len(gone) == 1
    assert all(c.online for c in listener.changes if c.clientid is None)
    assert store.online_users() == 1
    # Its deadline went with it: only the three kept devices time out.
    listener.changes.clear()
    clock.advance(61)
    assert sorted(c.clientid for c in listener.changes if c.clientid) == ["a", "d", "e"]
    assert [c.online for c in listener.changes if c.clientid is None] == [False]


def test_the_default_limit_is_100():
    clock = Clock()
    store = MemoryStore(clock, 60)
    for n in range(101):
        store.ping(Ping("alice", n, "1", f"d{n}"))
        clock.advance(1)
    kept = devices_of(store)
    assert len(kept) == 100 and "d0" not in kept and "d100" in kept


def test_a_device_going_offline_costs_the_same_with_many_siblings():
    def cost(siblings: int) -> float:
        devices = Devices("alice")
        for n in range(siblings):
            devices.ping(Ping("alice", 1, "1", f"d{n}"), Hiding())
        started = time.perf_counter()
        for n in range(siblings):
            devices.offline(f"d{n}")
        return (time.perf_counter() - started) / siblings

    assert cost(20_000) < 20 * cost(100)  # the any() over siblings made it 200 times
