"""The change feed (SPEC §8) of the in-process stores: which changes, positions, retention, waits.

The memory store and the SQLite store (a real file, its writer run at once
on a fake clock) must record the same changes for the same transitions.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from heartbeat.core.changes import Change, Position, PositionGone
from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.presence import Ping
from heartbeat.store.memory import MemoryStore
from heartbeat.store.sqlite import Database, SQLiteStore
from tests.helpers.sqlite_writer import START, Writer


def make(kind: str, path: Path, timeout: float = 10, retention: float = 3600,
         at: float = START) -> tuple[MemoryStore, Clock]:
    clock = Clock()
    clock.advance(at)
    hiding = Hiding.of(("3",))
    if kind == "memory":
        return MemoryStore(clock, timeout, hiding, changes_retention=retention), clock
    store = SQLiteStore(Database.open(str(path / "heartbeat.db")), clock, timeout, hiding,
                        writer=Writer(), changes_retention=retention)
    store.startService()
    return store, clock


def read(store: MemoryStore, after: Position | None = None, limit: int = 1000,
         userids=None):
    page = store.changes(after, limit, userids)
    assert page.called
    return page.result


def kinds(changes: tuple[Change, ...]) -> list[tuple]:
    return [(c.type, c.userid, c.clientid, c.status, c.online) for c in changes]


STORES = ["memory", "sqlite"]


@pytest.mark.parametrize("kind", STORES)
def test_each_transition_makes_the_changes_it_should_and_a_repeat_none(kind, tmp_path):
    store, clock = make(kind, tmp_path)
    steps = [
        (lambda: store.ping(Ping("alice", 1, "0", "web")),
         [("online", "alice", None, "0", True), ("device_online", "alice", "web", "0", True)]),
        (lambda: store.ping(Ping("alice", 2, "0", "web")), []),  # the same status: no change
        (lambda: store.ping(Ping("alice", 3, "1", "phone")),
         [("status", "alice", None, "1", True), ("device_online", "alice", "phone", "1", True)]),
        (lambda: store.ping(Ping("alice", 4, "1", "phone")), []),
        (lambda: store.leave("alice", "web"), [("device_offline", "alice", "web", "0", False)]),
        (lambda: store.leave("alice", "web"), []),  # left already
        (lambda: store.ping(Ping("alice", 5, "3", "phone")),  # hidden: offline, no "3"
         [("device_offline", "alice", "phone", "1", False), ("offline", "alice", None, "1", False)]),
        (lambda: store.ping(Ping("alice", 6, "3", "phone")), []),
        (lambda: store.ping(Ping("bob", 6, "2")),
         [("online", "bob", None, "2", True), ("device_online", "bob", "", "2", True)]),
    ]
    position = read(store).next
    for step, expected in steps:
        step()
        clock.advance(0)
        page = read(store, position)
        assert kinds(page.changes) == expected
        position = page.next
    # bob times out: his device, then he, offline, once.
    clock.advance(11)
    page = read(store, position)
    assert kinds(page.changes) == [("device_offline", "bob", "", "2", False),
                                   ("offline", "bob", None, "2", False)]
    assert all(c.at == int(START * 1000) for c in read(store).changes[:2])
    assert read(store, page.next).changes == ()
    ids = [c.id for c in read(store).changes]
    assert len(set(ids)) == len(ids) == 11 == store.changes_recorded


@pytest.mark.parametrize("kind", STORES)
def test_pages_limits_and_users(kind, tmp_path):
    store, clock = make(kind, tmp_path)
    for i in range(5):
        store.ping(Ping(f"u{i}", 1, "0"))
    clock.advance(0)
    first = read(store, limit=3)
    assert [c.userid for c in first.changes] == ["u0", "u0", "u1"]
    rest = read(store, first.next)
    assert len(rest.changes) == 7 and rest.next == read(store).next
    assert str(Position.parse(str(rest.next))) == str(rest.next)
    everything = read(store)
    assert [Position.parse(c.id) for c in everything.changes] == list(everything.positions)
    only = read(store, None, 1000, {"u3"})
    assert [c.type for c in only.changes] == ["online", "device_online"]
    assert only.next == rest.next


@pytest.mark.parametrize("text, position", [
    ("e95279ff_5", Position("e95279ff", ("5",))),
    ("e95279ff-5", Position("e95279ff", ("5",))),
    ("ab12_1796185312417-3", Position("ab12", ("1796185312417-3",))),
    ("ab12-1796185312417-3", Position("ab12", ("1796185312417-3",))),
    ("ab12-1796185312417-3.7", Position("ab12", ("1796185312417-3", "7"))),
])
def test_a_position_reads_from_its_text_or_its_changes_id(text, position):
    assert Position.parse(text) == position
    assert text in (str(position), position.change_id)
    assert Position.parse(position.change_id) == Position.parse(str(position)) == position


@pytest.mark.parametrize("text", [
    "", "e95279ff", "e95279ff_", "e95279ff-", "_5", "-5", "e9__5", "e9_-5", "e9_5.", "e9_5.x",
    "e9 5", "e9_5 ", "a" * 33 + "_5", "e9_1-2-3",
])
def test_what_is_neither_a_position_nor_a_changes_id_is_gone(text):
    with pytest.raises(PositionGone):
        Position.parse(text)


@pytest.mark.parametrize("kind", STORES)
def test_a_position_past_retention_or_of_another_feed_is_gone(kind, tmp_path):
    store, clock = make(kind, tmp_path, timeout=1000, retention=60)
    start = read(store).next
    store.ping(Ping("alice", 1, "0"))
    clock.advance(0)
    fresh = read(store).next
    clock.advance(61)
    store.ping(Ping("bob", 1, "0"))
    clock.advance(1)
    clock.advance(0)
    failure = []
    store.changes(start, 10).addErrback(failure.append)
    assert failure and failure[0].check(PositionGone)
    assert [c.userid for c in read(store, fresh).changes] == ["bob", "bob"]
    assert [c.userid for c in read(store).changes] == ["bob", "bob"]
    for stranger in (Position("zz99", fresh.marks), Position(fresh.epoch, ("999",))):
        failure = []
        store.changes(stranger, 10).addErrback(failure.append)
        assert failure and failure[0].check(PositionGone)
    with pytest.raises(PositionGone):
        Position.parse("not a position")


@pytest.mark.parametrize("kind", STORES)
def test_a_waiter_wakes_when_a_change_is_recorded_and_not_before(kind, tmp_path):
    store, clock = make(kind, tmp_path)
    position = store.position().result
    waiting = store.wait(position)
    store.ping(Ping("alice", 1, "0"))
    clock.advance(0)
    assert waiting.called
    again = store.wait(store.position().result)
    store.ping(Ping("alice", 2, "0"))  # no change
    clock.advance(0)
    assert not again.called
    again.cancel()
    assert store.wait(position).called  # something is after it already


def test_the_sqlite_feed_and_delivered_positions_survive_a_restart(tmp_path):
    store, clock = make("sqlite", tmp_path)
    store.ping(Ping("alice", 1, "0"))
    clock.advance(0)
    middle = store.position().result
    store.set_delivered("https://example.com/hook", middle)
    store.ping(Ping("bob", 1, "0"))
    clock.advance(0)
    before = read(store)
    store.close()
    again, clock = make("sqlite", tmp_path)
    assert again.position().result == before.next
    assert read(again) == before and len(before.positions) == 4
    assert [c.userid for c in read(again, middle).changes] == ["bob", "bob"]
    assert again.delivered("https://example.com/hook").result == middle
    assert again.delivered("elsewhere").result is None
    # Numbering goes on where it was: no id is reused.
    again.leave("bob", "")
    clock.advance(0)
    ids = [c.id for c in read(again).changes]
    assert len(set(ids)) == len(ids) == 6


def test_a_failed_commit_records_nothing_and_changes_nothing(tmp_path):
    store, clock = make("sqlite", tmp_path)
    writer = store._writer
    writer.failing = True
    store.ping(Ping("alice", 1, "0")).addErrback(lambda _: None)
    clock.advance(0)
    writer.failing = False
    assert read(store).changes == () and store.changes_recorded == 0
    store.ping(Ping("alice", 2, "0"))
    clock.advance(0)
    assert [c.type for c in read(store).changes] == ["online", "device_online"]


def test_a_timeout_that_a_ping_overtook_is_no_change(tmp_path):
    store, clock = make("sqlite", tmp_path, timeout=10)
    store.ping(Ping("alice", 1, "0"))
    clock.advance(0)
    # The ping comes as the deadline falls, in the same batch, before the sweep.
    clock.advance(9.5)
    store.ping(Ping("alice", 11, "0"))
    clock.advance(0.5)
    assert [c.type for c in read(store).changes] == ["online", "device_online"]
    assert store.get(["alice"]).result["alice"].user.online


class HeldWriter:
    """Runs writes only when released, so reads come while a batch is in flight."""

    def __init__(self) -> None:
        self.held: list = []

    def __call__(self, f, *args):
        from twisted.internet.defer import Deferred, maybeDeferred

        if f.__name__ in ("read_users", "read_online"):
            # A user not in memory has no write in flight: their read is not held.
            return maybeDeferred(f, *args)
        d = Deferred()
        self.held.append((d, f, args))
        return d

    def release(self) -> None:
        from twisted.internet.defer import maybeDeferred

        while self.held:
            d, f, args = self.held.pop(0)
            maybeDeferred(f, *args).chainDeferred(d)


def snapshot(store: MemoryStore, userids) -> tuple[dict, Position]:
    cursor = store.position().result  # first, as /status reads it
    states = store.get(userids).result
    return {u: (s.user.online, s.user.status, {c: d.online for c, d in s.devices.items()})
            for u, s in states.items() if s is not None}, cursor


def applied(known: dict, changes) -> None:
    for c in changes:
        online, status, devices = known.get(c.userid, (False, None, {}))
        devices = dict(devices)
        if c.clientid is None:
            online, status = c.online, c.status
        else:
            devices[c.clientid] = c.online
        known[c.userid] = (online, status, devices)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("ping"), st.sampled_from("ab"), st.sampled_from("xy"),
              st.sampled_from("013")),
    st.tuples(st.just("leave"), st.sampled_from("ab"), st.sampled_from("xy")),
    st.tuples(st.just("wait"), st.floats(0, 12)),
    st.tuples(st.just("commit"),),
    st.tuples(st.just("resync"),),
), max_size=40))
def test_sqlite_snapshot_and_cursor_then_changes_rebuild_state_with_writes_in_flight(steps):
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        clock = Clock()
        clock.advance(START)
        writer = HeldWriter()
        store = SQLiteStore(Database.open(str(Path(directory) / "heartbeat.db")), clock, 10,
                            Hiding.of(("3",)), writer=writer)
        store.startService()
        store._reader = lambda f, *args: maybeDeferred(f, *args)
        known, cursor = snapshot(store, "ab")
        for step in steps:
            if step[0] == "ping":
                store.ping(Ping(step[1], int(clock.seconds()), step[3], step[2]))
            elif step[0] == "leave":
                store.leave(step[1], step[2])
            elif step[0] == "wait":
                clock.advance(step[1])
            elif step[0] == "commit":
                clock.advance(0)
                writer.release()
            else:
                known, cursor = snapshot(store, "ab")
            page = store.changes(cursor, 1000).result
            applied(known, page.changes)
            cursor = page.next
            assert known == snapshot(store, "ab")[0]
        store.close()
        writer.release()


def test_the_memory_feed_forgets_an_erased_user_but_for_one_erased_change(tmp_path):
    store, clock = make("memory", tmp_path)
    store.ping(Ping("alice", 1, "0", "web"))
    store.ping(Ping("bob", 1, "0"))
    before = read(store)
    store.feed.erase("alice", 42)
    page = read(store)
    assert [(c.type, c.userid) for c in page.changes] == [
        ("online", "bob"), ("device_online", "bob"), ("erased", "alice")]
    assert page.changes[-1].as_json() == {
        "id": page.changes[-1].id, "type": "erased", "userid": "alice", "at": 42}
    # Positions from before still read on, past the gap.
    assert [c.type for c in read(store, before.positions[0]).changes] == [
        "online", "device_online", "erased"]
