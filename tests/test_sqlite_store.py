"""The embedded store against real SQLite files, its writer run at once on a fake clock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.presence import Ping, Presence
from heartbeat.core.store_contract import StoreUnavailable
from heartbeat.store.memory import MemoryStore
from heartbeat.store.sqlite import (
    APPLICATION_ID,
    PROBE_INTERVAL,
    SCHEMA_VERSION,
    Database,
    DatabaseUnusable,
    SQLiteStore,
    open_store,
)
from tests.helpers.sqlite_writer import START, Later, Writer


class Listener:
    def __init__(self) -> None:
        self.changes: list[Presence] = []

    def deliver(self, change: Presence, position: object = None) -> None:
        self.changes.append(change)

    def bus_lost(self) -> None: ...
    def resync(self) -> None: ...


def make_store(path: Path, timeout: float = 60, at: float = START, hiding: Hiding = Hiding()
               ) -> tuple[SQLiteStore, Clock, Writer]:
    clock = Clock()
    clock.advance(at)
    writer = Writer()
    store = SQLiteStore(Database.open(str(path)), clock, timeout, hiding, writer=writer)
    store.startService()
    return store, clock, writer


def reopen(store: SQLiteStore, path: Path, **kw) -> tuple[SQLiteStore, Clock, Writer]:
    store.close()
    return make_store(path, **kw)


def state_of(store: MemoryStore, userid: str):
    return store.get([userid]).result[userid]


def test_a_ping_is_answered_once_committed_and_is_there_after_a_restart(tmp_path):
    path = tmp_path / "heartbeat.db"
    store, clock, writer = make_store(path)
    answered: list = []
    store.ping(Ping("alice", 5, "1", "phone")).addCallback(answered.append)
    assert not answered and state_of(store, "alice") is None
    clock.advance(0)
    assert answered and writer.calls == 1
    assert state_of(store, "alice").user == Presence("alice", 5, "1", True)
    again, _, _ = reopen(store, path)
    state = state_of(again, "alice")
    assert state.user == Presence("alice", 5, "1", True)
    assert state.devices == {"phone": Presence("alice", 5, "1", True, "phone")}


def test_the_pings_and_leaves_of_one_turn_are_one_transaction_in_order(tmp_path):
    path = tmp_path / "heartbeat.db"
    store, clock, writer = make_store(path)
    store.listener = listener = Listener()
    store.subscribe("alice")
    answers = [store.ping(Ping("alice", 1, "a", "phone")), store.ping(Ping("alice", 2, "b", "desk")),
               store.leave("alice", "phone"), store.ping(Ping("bob", 3, "c"))]
    clock.advance(0)
    assert writer.calls == 1 and all(d.called for d in answers)
    assert listener.changes[-1] == Presence("alice", 1, "a", False, "phone")
    again, _, _ = reopen(store, path)
    alice = state_of(again, "alice")
    assert alice.user == Presence("alice", 2, "b", True)
    assert alice.devices["phone"].online is False and alice.devices["desk"].online is True
    assert state_of(again, "bob").user == Presence("bob", 3, "c", True)


def test_a_shorter_timeout_after_a_restart_is_kept(tmp_path):
    path = tmp_path / "heartbeat.db"
    store, clock, _ = make_store(path, timeout=60)
    store.ping(Ping("alice", 1, "1"))
    clock.advance(0)
    # Restarted with a 2 s timeout: a new ping's deadline is earlier than the
    # stored one, and it is the one that counts.
    again, clock, _ = reopen(store, path, timeout=2, at=START + 1)
    again.ping(Ping("alice", 2, "1"))
    clock.advance(0)
    clock.advance(2)
    assert not state_of(again, "alice").user.online


def test_a_hidden_ping_is_stored_as_watchers_see_it(tmp_path):
    path = tmp_path / "heartbeat.db"
    hiding = Hiding.of(("3",))
    store, clock, _ = make_store(path, hiding=hiding)
    store.ping(Ping("alice", 1, "0", "phone"))
    store.ping(Ping("alice", 2, "0", "desk"))
    clock.advance(0)
    store.ping(Ping("alice", 5, "3", "phone"))
    clock.advance(0)
    # Restarted: the hidden device is offline at its last visible ping, the
    # visible one keeps the user online; no stored row says status 3.
    again, _, _ = reopen(store, path, hiding=hiding)
    alice = state_of(again, "alice")
    assert alice.user == Presence("alice", 2, "0", True)
    assert alice.devices["phone"] == Presence("alice", 1, "0", False, "phone")
    assert alice.devices["desk"].online
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM devices WHERE status = '3'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM users WHERE status = '3'").fetchone() == (0,)


def test_a_deadline_survives_a_restart_and_one_already_due_falls_at_once(tmp_path):
    path = tmp_path / "heartbeat.db"
    store, clock, _ = make_store(path, timeout=10)
    store.ping(Ping("alice", 1, "1"))
    clock.advance(0)
    # Restarted 4 s later: still online, offline 10 s after the ping.
    again, clock, _ = reopen(store, path, at=START + 4)
    again.listener = listener = Listener()
    again.subscribe("alice")
    assert state_of(again, "alice").user.online and again.online_users() == 1
    clock.advance(5)
    assert state_of(again, "alice").user.online
    clock.advance(1)
    assert not state_of(again, "alice").user.online
    assert listener.changes[-1] == Presence("alice", 1, "1", False)
    # A restart after the deadline: offline at the first sweep, before anyone reads.
    again.ping(Ping("alice", 11, "1"))
    clock.advance(0)
    late, clock, _ = reopen(again, path, at=START + 3600)
    assert state_of(late, "alice").user.online  # not yet swept
    clock.advance(0)
    assert not state_of(late, "alice").user.online and late.offline_transitions == 1


def test_a_failing_write_answers_503_and_the_store_recovers(tmp_path):
    path = tmp_path / "heartbeat.db"
    store, clock, writer = make_store(path)
    writer.failing = True
    refused = store.ping(Ping("alice", 1, "1"))
    clock.advance(0)
    failures: list = []
    refused.addErrback(failures.append)
    assert failures[0].check(StoreUnavailable)
    assert store.available is False and state_of(store, "alice") is None
    calls = writer.calls
    clock.advance(PROBE_INTERVAL)  # the probe fails too: still unavailable
    assert writer.calls == calls + 1 and store.available is False
    writer.failing = False
    clock.advance(PROBE_INTERVAL)
    assert store.available is True
    answered = store.ping(Ping("alice", 2, "2"))
    clock.advance(0)
    assert answered.called and state_of(store, "alice").user.time == 2


def test_close_waits_for_the_write_under_way(tmp_path):
    path = tmp_path / "heartbeat.db"
    clock = Clock()
    slow = Later()
    store = SQLiteStore(Database.open(str(path)), clock, 60, writer=slow)
    store.startService()
    slow.run()  # start-up's read of who is online
    answered = store.ping(Ping("alice", 1, "1"))
    slow.run()  # alice, read before her ping
    clock.advance(0)
    closed = store.close()
    assert not closed.called
    slow.run()
    assert answered.called
    slow.run()  # the connection's close, in the writer
    assert closed.called
    Database.open(str(path))  # unlocked


def test_memory_keeps_nothing(tmp_path):
    assert type(open_store(":memory:", Clock(), 60)) is MemoryStore


def test_a_new_database_is_heartbeats_in_wal_mode(tmp_path):
    path = tmp_path / "heartbeat.db"
    make_store(path)[0].close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_schema_1_file_gains_the_change_feed_and_keeps_its_users(tmp_path):
    path = tmp_path / "heartbeat.db"
    store, clock, _ = make_store(path)
    store.ping(Ping("alice", 1, "1"))
    clock.advance(0)
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TABLE changes")
    conn.execute("DELETE FROM meta")
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    again, clock, _ = make_store(path)
    assert state_of(again, "alice").user.time == 1
    again.ping(Ping("alice", 2, "2"))
    clock.advance(0)
    assert [c.type for c in again.changes(None, 10).result.changes] == ["status"]
    again.close()


def _refused(path: Path) -> str:
    with pytest.raises(DatabaseUnusable) as refused:
        Database.open(str(path))
    message = str(refused.value)
    assert f"DATABASE={str(path)!r}" in message and "\n" not in message
    return message


def test_a_file_that_is_not_sqlite_is_left_alone(tmp_path):
    path = tmp_path / "heartbeat.db"
    path.write_bytes(b"my notes, not a database\n" * 10)
    before = path.read_bytes()
    assert "not a SQLite database" in _refused(path)
    assert path.read_bytes() == before
    assert not (tmp_path / "heartbeat.db-lock").exists()


def test_another_programs_database_is_left_alone(tmp_path):
    path = tmp_path / "heartbeat.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    assert "not heartbeat's" in _refused(path)
    assert path.read_bytes() == before


def test_a_database_of_a_newer_heartbeat_is_left_alone(tmp_path):
    path = tmp_path / "heartbeat.db"
    make_store(path)[0].close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    assert "newer heartbeat" in _refused(path)


def test_a_second_opener_is_refused_while_the_first_holds_it(tmp_path):
    path = tmp_path / "heartbeat.db"
    store, _, _ = make_store(path)
    assert "another process" in _refused(path)
    store.close()
    Database.open(str(path))


def test_a_directory_that_does_not_exist_is_refused(tmp_path):
    assert "cannot create" in _refused(tmp_path / "missing" / "heartbeat.db")


def test_a_moved_deadline_is_kept_in_order_with_the_pings_and_leaves_of_its_turn(tmp_path):
    path = tmp_path / "heartbeat.db"
    store, clock, writer = make_store(path, timeout=10)
    store.ping(Ping("alice", 1, "1", "held"))
    store.ping(Ping("alice", 1, "1", "left"))
    store.ping(Ping("alice", 1, "1", "pinged"))
    clock.advance(0)
    # One turn: a renewal of three devices (a presence stream's), one of which
    # then leaves and one of which then pings (its ping's deadline wins).
    store.rearm([("alice", "held"), ("alice", "left"), ("alice", "pinged")], 100)
    store.leave("alice", "left")
    store.ping(Ping("alice", 2, "2", "pinged"))
    store.rearm([("alice", "never")], 100)
    calls = writer.calls
    clock.advance(0)
    assert writer.calls == calls + 1
    # Restarted 50 s later: the renewed device is online, the one that left is
    # not, the pinged one fell due 10 s after its ping, and no device was made.
    again, clock, _ = reopen(store, path, timeout=10, at=START + 50)
    clock.advance(0)
    devices = state_of(again, "alice").devices
    assert {clientid: d.online for clientid, d in devices.items()} == {
        "held": True, "left": False, "pinged": False}
    clock.advance(51)
    assert not state_of(again, "alice").user.online


def test_memory_holds_the_online_the_watched_and_a_bounded_cache(tmp_path, monkeypatch):
    monkeypatch.setattr("heartbeat.store.sqlite.RESTING_USERS", 5)
    path = tmp_path / "heartbeat.db"
    store, clock, _ = make_store(path, timeout=10)
    store.subscribe("u0")
    for n in range(50):
        store.ping(Ping(f"u{n}", n, "1", "phone"))
    clock.advance(0)
    assert len(store._users) == 50  # all online
    clock.advance(11)
    # Offline: the watched one and the five last used stay.
    assert "u0" in store._users and len(store._users) == 6
    # The others are read back from the file when asked, whole.
    assert state_of(store, "u7").user == Presence("u7", 7, "1", False)
    assert state_of(store, "u7").devices["phone"].online is False
    assert state_of(store, "nobody") is None
    # A restart loads only who is online.
    store.ping(Ping("u9", 60, "2", "desk"))
    clock.advance(0)
    again, _, _ = reopen(store, path, at=START + 12)
    assert list(again._users) == ["u9"] and again.loaded and again.online_users() == 1
    assert set(state_of(again, "u9").devices) == {"phone", "desk"}


def test_a_user_read_back_keeps_their_devices_and_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr("heartbeat.store.sqlite.RESTING_USERS", 0)
    path = tmp_path / "heartbeat.db"
    clock = Clock()
    clock.advance(START)
    store = SQLiteStore(Database.open(str(path)), clock, 10, max_devices=3, writer=Writer())
    store.startService()
    for device in ("a", "b", "c"):
        store.ping(Ping("alice", 1, "1", device))
        clock.advance(0)
    clock.advance(11)
    assert "alice" not in store._users  # offline, unwatched, nothing cached
    store.ping(Ping("alice", 20, "1", "d"))
    clock.advance(0)
    clock.advance(0)  # the forgotten device's row goes in the next transaction
    assert sorted(state_of(store, "alice").devices) == ["b", "c", "d"]
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT clientid FROM devices ORDER BY clientid").fetchall()
    assert rows == [("b",), ("c",), ("d",)]


def _alice_stored(path: Path) -> Clock:
    """A file where alice is online, its store closed; the clock it ran on."""
    store, clock, _ = make_store(path)
    store.ping(Ping("alice", 1, "1"))
    clock.advance(0)
    store.close()
    return clock


def test_a_database_of_the_schema_before_gains_the_index_of_online_devices(tmp_path):
    path = tmp_path / "heartbeat.db"
    _alice_stored(path)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX devices_online")
        conn.execute("PRAGMA user_version = 2")
    again, _, _ = make_store(path, at=START + 1)
    assert state_of(again, "alice").user.online and again.online_users() == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'devices_online'"
                            ).fetchone() == (1,)


def test_presence_is_loaded_after_start_and_asked_users_are_read_meanwhile(tmp_path):
    path = tmp_path / "heartbeat.db"
    clock = _alice_stored(path)
    later = Later()
    again = SQLiteStore(Database.open(str(path)), clock, 60, writer=later)
    again.startService()
    loaded: list = []
    again.when_loaded().addCallback(loaded.append)
    assert not again.loaded and again.online_users() is None
    asked = again.get(["alice"])
    later.run(1)  # alice's read, answered first
    assert asked.result["alice"].user.online
    later.run()  # then everyone online
    assert loaded and again.loaded and again.online_users() == 1
    again.close()


def test_devices_stored_past_a_lower_limit_are_trimmed_when_read(tmp_path):
    path = tmp_path / "heartbeat.db"
    store, clock, _ = make_store(path, timeout=10)
    for n in range(5):
        store.ping(Ping("alice", n, "1", f"d{n}"))
        clock.advance(1)
    store.leave("alice", "d3")
    clock.advance(0)
    store.close()
    clock = Clock()
    clock.advance(START + 6)
    again = SQLiteStore(Database.open(str(path)), clock, 10, max_devices=3, writer=Writer())
    again.startService()
    clock.advance(0)
    # d3, offline, goes first, then d0, the least recently seen of the online ones.
    assert sorted(state_of(again, "alice").devices) == ["d1", "d2", "d4"]
    assert again._pending == {}  # nothing holds alice once the rows are gone
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone() == (3,)
