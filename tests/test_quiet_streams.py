"""Stream options (SPEC §2): changes=only, snapshot=1, batch=N and resume, on a Clock."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from heartbeat.core import quiet
from heartbeat.core.changes import Page
from heartbeat.core.errors import BadInput
from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.hub import Hub
from heartbeat.core.presence import Ping
from heartbeat.core.quiet import OptionStream
from heartbeat.core.stream_options import PLAIN, StreamOptions, stream_options
from heartbeat.core.user_query import posted_users
from heartbeat.store.memory import MemoryStore
from heartbeat.store.sqlite import Database, SQLiteStore
from heartbeat.web.api import SUBSCRIBE_BODY
from tests.helpers.in_memory import StreamEnd, Wire
from tests.helpers.sqlite_writer import Writer

TIMEOUT = 60


class Query:
    """A request as core reads it: query arguments only."""

    def __init__(self, query: dict[str, list[str]]) -> None:
        self.args = {k.encode(): [v.encode() for v in vs] for k, vs in query.items()}

    def getHeader(self, name: bytes) -> bytes | None:
        return None


class World:
    """A store (``memory``, or ``sqlite`` on a file, written at once) and a hub, on a Clock."""

    def __init__(self, kind: str = "memory") -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.directory: str | None = None
        if kind == "sqlite":
            self.directory = tempfile.mkdtemp()
            self.store = SQLiteStore(Database.open(str(Path(self.directory) / "heartbeat.db")),
                                     self.clock, TIMEOUT, writer=Writer())
        else:
            self.store = MemoryStore(self.clock, TIMEOUT)
        self.hub = Hub(self.store, self.clock, self.store, positions=True)

    def close(self) -> None:
        """Close the file (and its lock) and remove it."""
        self.store.close()
        if self.directory is not None:
            shutil.rmtree(self.directory)

    def ping(self, userid: str, status: str = "0", clientid: str = "web") -> None:
        self.store.ping(Ping(userid, int(self.clock.seconds()), status, clientid))
        self.clock.advance(0)  # the SQLite store commits on the next turn

    def leave(self, userid: str, clientid: str = "web") -> None:
        self.store.leave(userid, clientid)
        self.clock.advance(0)

    def open(self, *userids: str, clientid: str | None = None, last_event_id: str | None = None,
             **options: object) -> Watcher:
        stream = OptionStream(userids, self.clock, 60,
                              None if last_event_id is None else last_event_id.encode(),
                              clientid, StreamOptions(**options))  # type: ignore[arg-type]
        transport = StreamEnd()
        stream.take(transport)
        self.hub.attach(stream)
        return Watcher(stream, transport)


class Watcher:
    def __init__(self, stream: OptionStream, transport: StreamEnd) -> None:
        self.stream = stream
        self.transport = transport
        self._read = 0

    def all(self) -> list[tuple[str | None, str, object]]:
        """Every event so far: (event name, id, data)."""
        found = []
        for block in self.transport.value().split(b"\n\n"):
            fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
            if b"data" in fields:
                name = fields.get(b"event")
                found.append((None if name is None else name.decode(), fields[b"id"].decode(),
                              json.loads(fields[b"data"])))
        return found

    def new(self) -> list[tuple[str | None, str, object]]:
        events = self.all()
        fresh, self._read = events[self._read:], len(events)
        return fresh

    def last_id(self) -> str:
        return self.all()[-1][1]


# Parsing: one place, every other value a 400.

@pytest.mark.parametrize("query, options", [
    ({}, PLAIN),
    ({"user": ["a"]}, PLAIN),
    ({"changes": ["only"]}, StreamOptions(changes_only=True)),
    ({"snapshot": ["1"]}, StreamOptions(snapshot=True)),
    ({"batch": ["1"]}, StreamOptions(batch=1)),
    ({"batch": ["60"]}, StreamOptions(batch=60)),
    ({"changes": ["only"], "snapshot": ["1"], "batch": ["5"]},
     StreamOptions(changes_only=True, snapshot=True, batch=5)),
])
def test_options_parse(query, options):
    assert stream_options(Query(query)) == options


@pytest.mark.parametrize("query", [
    {"changes": ["maybe"]}, {"changes": [""]}, {"changes": ["only", "all"]},
    {"snapshot": ["2"]}, {"snapshot": ["0"]}, {"snapshot": ["true"]},
    {"batch": ["0"]}, {"batch": ["61"]}, {"batch": ["-1"]}, {"batch": ["1.5"]},
    {"batch": ["05"]}, {"batch": [""]}, {"batch": ["x"]},
])
def test_any_other_value_is_bad_input(query):
    with pytest.raises(BadInput):
        stream_options(Query(query))


def test_posted_users_follow_the_same_rules():
    assert posted_users(b'{"users": ["a", "b", "a"]}', 3) == ("a", "b")
    for body in (b"", b"[]", b'{"users": "a"}', b'{"users": [1]}', b'{"users": []}',
                 b'{"users": [""]}', b'{"users": ["a", "b", "c", "d"]}', b"{nope",
                 b'{"users": ["\\ud800"]}'):
        with pytest.raises(BadInput):
            posted_users(body, 3)


# changes=only

def test_changes_only_sends_the_state_then_only_what_changes():
    world = World()
    world.ping("alice", "0")
    watcher = world.open("alice", "bob", changes_only=True)
    [(name, eid, data)] = watcher.new()
    assert name is None and data == {"time": 1_800_000_000, "status": "0", "userid": "alice",
                                     "online": True}
    for _ in range(5):  # the same status, again and again: nothing
        world.clock.advance(10)
        world.ping("alice", "0")
    world.ping("alice", "0", clientid="phone")  # a second device: the user's view is the same
    assert watcher.new() == []
    world.ping("alice", "1")  # a different status: one event
    world.ping("bob", "0")  # bob comes online: one event
    changed = watcher.new()
    assert [(d["userid"], d["status"], d["online"]) for _, _, d in changed] == [
        ("alice", "1", True), ("bob", "0", True)]
    world.leave("alice", "web")
    world.leave("alice", "phone")  # her last device: offline, once
    world.clock.advance(TIMEOUT + 2)  # bob times out: offline, once
    offline = watcher.new()
    assert [(d["userid"], d["online"]) for _, _, d in offline] == [("alice", False), ("bob", False)]
    # Every id is a feed position, newer each time.
    ids = [eid for _, eid, _ in watcher.all()]
    assert all("_" in eid for eid in ids) and len(set(ids)) == len(ids)


def test_after_a_bus_outage_a_quiet_stream_gets_only_visible_changes_with_a_position():
    world = World()
    world.ping("alice", "0")
    world.ping("bob", "0")
    watcher = world.open("alice", "bob", changes_only=True)
    watcher.new()
    world.hub.bus_lost()
    world.store.listener = None  # the bus is down: nobody hears these
    world.clock.advance(10)
    world.ping("alice", "1")  # a status change
    world.ping("bob", "0")  # only a newer time: no change
    world.store.listener = world.hub
    world.hub.resync()
    world.clock.advance(0)
    [(_, eid, data)] = watcher.new()
    assert (data["userid"], data["status"]) == ("alice", "1")
    # Its id is a position: a reconnect from it gets nothing again.
    again = world.open("alice", "bob", changes_only=True, last_event_id=eid)
    assert again.new() == []


def test_a_plain_stream_beside_a_quiet_one_still_gets_every_ping():
    world = World()
    quiet = world.open("alice", changes_only=True)
    loud = world.open("alice", snapshot=True)
    for _ in range(3):
        world.ping("alice", "0")
    assert len(quiet.new()) == 1
    assert [name for name, _, _ in loud.new()] == ["snapshot", None, None, None]


def test_changes_only_on_a_device_stream_is_that_device_going_online_and_offline():
    world = World()
    watcher = world.open("alice", clientid="phone", changes_only=True)
    world.ping("alice", "0", clientid="web")  # another device: nothing
    assert watcher.new() == []
    world.ping("alice", "0", clientid="phone")  # the device appears: one
    world.ping("alice", "1", clientid="phone")
    world.ping("alice", "1", clientid="phone")
    world.leave("alice", "phone")  # gone: one
    assert [(d["clientid"], d["online"]) for _, _, d in watcher.new()] == [
        ("phone", True), ("phone", False)]


def test_a_hidden_status_is_one_offline_on_a_quiet_stream():
    world = World()
    world.store = MemoryStore(world.clock, TIMEOUT, Hiding(frozenset({"3"})))
    world.hub = Hub(world.store, world.clock, world.store, positions=True)
    world.ping("alice", "0")
    watcher = world.open("alice", changes_only=True)
    watcher.new()
    world.ping("alice", "3")
    world.ping("alice", "3")
    assert [(d["status"], d["online"]) for _, _, d in watcher.new()] == [("0", False)]


# snapshot=1

def test_snapshot_is_one_event_with_every_user_null_for_never_seen():
    world = World()
    users = [f"u{i}" for i in range(256)]
    for userid in users[::3]:
        world.ping(userid, "2")
    watcher = world.open(*users, snapshot=True)
    [(name, _, data)] = watcher.new()
    assert name == "snapshot"
    assert list(data["users"]) == users
    for i, userid in enumerate(users):
        state = data["users"][userid]
        if i % 3:
            assert state is None
        else:
            assert state == {"time": 1_800_000_000, "status": "2", "online": True,
                             "devices": {"web": {"time": 1_800_000_000, "status": "2",
                                                 "online": True}}}


def test_snapshot_on_a_device_stream_is_the_device():
    world = World()
    world.ping("alice", "1", clientid="phone")
    [(name, _, data)] = world.open("alice", clientid="phone", snapshot=True).new()
    assert name == "snapshot"
    assert data == {"users": {"alice": {"time": 1_800_000_000, "status": "1", "online": True}}}


def test_changes_that_come_while_the_state_is_read_follow_it():
    world = World()
    world.ping("alice", "0")
    watcher = world.open("alice", "bob", snapshot=True, changes_only=True)
    # The memory store answers at once: the state is sent before any change.
    world.ping("bob", "1")
    names = [name for name, _, _ in watcher.new()]
    assert names == ["snapshot", None]


# batch=N

def test_batch_holds_changes_and_sends_the_latest_of_each_at_most_every_n_seconds():
    world = World()
    world.ping("alice", "0")
    watcher = world.open("alice", "bob", "carol", batch=2)
    assert [d["userid"] for _, _, d in watcher.new()] == ["alice"]  # the state: not held
    world.clock.advance(0.5)
    world.ping("bob", "0")
    world.ping("alice", "1")
    world.ping("bob", "2")
    world.clock.advance(0.5)
    assert watcher.new() == []
    world.clock.advance(1.0)  # two seconds after the state
    [(name, eid, data)] = watcher.new()
    assert name == "batch"
    assert [(c["userid"], c["status"]) for c in data["changes"]] == [("alice", "1"), ("bob", "2")]
    world.clock.advance(10)  # an empty window: nothing
    assert watcher.new() == []
    world.ping("carol", "0")  # the window passed long ago: at once
    world.clock.advance(0)
    world.ping("carol", "1")  # within 2 s of that one: held
    world.clock.advance(1.9)
    assert [[c["status"] for c in d["changes"]] for _, _, d in watcher.new()] == [["0"]]
    world.clock.advance(0.1)
    assert [[c["status"] for c in d["changes"]] for _, _, d in watcher.new()] == [["1"]]


def test_batch_per_device_on_a_device_stream_and_quiet_batches_carry_positions():
    world = World()
    watcher = world.open("alice", clientid="phone", batch=5, changes_only=True)
    for status in "0101":
        world.ping("alice", status, clientid="phone")
    world.leave("alice", "phone")
    world.clock.advance(5)
    [(name, eid, data)] = watcher.new()
    assert name == "batch" and "_" in eid
    assert data == {"changes": [{"time": 1_800_000_000, "status": "1", "userid": "alice",
                                 "online": False, "clientid": "phone"}]}


def test_a_paused_reader_gets_its_batch_when_it_reads_again():
    world = World()
    watcher = world.open("alice", batch=1)
    watcher.stream.pauseProducing()
    world.ping("alice", "0")
    world.clock.advance(5)
    assert watcher.new() == []
    watcher.stream.resumeProducing()
    world.clock.advance(0)
    assert [name for name, _, _ in watcher.new()] == ["batch"]
    watcher.stream.connectionLost(None)  # type: ignore[arg-type]
    assert not world.clock.getDelayedCalls() or all(
        c.func != watcher.stream._send_batch for c in world.clock.getDelayedCalls())


# Resume: one position for the whole stream.

@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_resume_sends_exactly_the_users_that_changed_since_the_position(kind):
    world = World(kind)
    users = [f"u{i}" for i in range(256)]
    for userid in users:
        world.ping(userid, "0")
    first = world.open(*users, changes_only=True)
    assert len(first.new()) == 256
    position = first.last_id()
    first.stream.connectionLost(None)  # type: ignore[arg-type]
    changed = users[5:15]
    for userid in changed:
        world.ping(userid, "1")
    for userid in users:  # the same status again: no change
        world.ping(userid, "1" if userid in changed else "0")
    again = world.open(*users, changes_only=True, last_event_id=position)
    resumed = again.new()
    assert sorted(d["userid"] for _, _, d in resumed) == sorted(changed)
    assert all(d["status"] == "1" for _, _, d in resumed)
    # Nothing changed since this one: nothing at all.
    third = world.open(*users, changes_only=True, last_event_id=again.last_id())
    assert third.new() == []
    world.close()


def test_resume_for_one_user_and_with_a_snapshot():
    world = World()
    world.ping("alice", "0")
    watcher = world.open("alice", changes_only=True)
    position = watcher.last_id()
    world.leave("alice")
    [(_, _, data)] = world.open("alice", changes_only=True, last_event_id=position).new()
    assert data["online"] is False
    [(name, _, data)] = world.open("alice", "bob", changes_only=True, snapshot=True,
                                   last_event_id=position).new()
    assert name == "snapshot" and list(data["users"]) == ["alice"]


@pytest.mark.parametrize("last_event_id", [
    "1800000000-0123456789ab",  # an ordinary event id: no position
    "garbage", "deadbeef_1", "_", "",
])
def test_an_id_that_is_no_position_here_gets_the_full_state(last_event_id):
    world = World()
    world.ping("alice", "0")
    world.ping("bob", "0")
    watcher = world.open("alice", "bob", changes_only=True, last_event_id=last_event_id)
    assert sorted(d["userid"] for _, _, d in watcher.new()) == ["alice", "bob"]


def test_a_position_past_retention_gets_the_full_state():
    world = World()
    world.store = MemoryStore(world.clock, TIMEOUT, changes_retention=30)
    world.hub = Hub(world.store, world.clock, world.store, positions=True)
    world.ping("alice", "0")
    position = world.open("alice", changes_only=True).last_id()
    world.ping("bob", "0")
    world.clock.advance(TIMEOUT + 2)  # both offline; the first changes age out
    world.ping("carol", "0")
    watcher = world.open("alice", "bob", changes_only=True, last_event_id=position)
    assert sorted(d["userid"] for _, _, d in watcher.new()) == ["alice", "bob"]


# The final view of a quiet stream is what /status says.

ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("ping"), st.sampled_from("abc"), st.sampled_from("012"),
              st.sampled_from(("web", "phone"))),
    st.tuples(st.just("leave"), st.sampled_from("abc"), st.just(""),
              st.sampled_from(("web", "phone"))),
    st.tuples(st.just("wait"), st.just(""), st.just(""), st.sampled_from((1, 7, 30, 70))),
), max_size=40)


@settings(max_examples=100, deadline=None)
@given(kind=st.sampled_from(("memory", "sqlite")), actions=ACTIONS, before=st.integers(0, 40), snapshot=st.booleans(),
       batch=st.sampled_from((0, 1, 5)), away=st.integers(0, 40), back=st.integers(0, 20))
def test_a_quiet_streams_final_view_is_the_status(kind, actions, before, snapshot, batch, away,
                                                  back):
    world = World(kind)
    users = ("a", "b", "c")
    options = {"changes_only": True, "snapshot": snapshot, "batch": batch}
    watchers: list[Watcher] = []

    def act(action: tuple) -> None:
        kind, userid, status, extra = action
        if kind == "ping":
            world.ping(userid, status, clientid=extra)
        elif kind == "leave":
            world.leave(userid, extra)
        else:
            world.clock.advance(extra)

    for action in actions[:before]:
        act(action)
    watchers.append(world.open(*users, **options))
    last_id: str | None = None
    for i, action in enumerate(actions[before:]):
        if i == away:  # the client is gone for a while, then resumes from its last id
            world.clock.advance(60)  # what it was sent, it read
            last_id = watchers[-1].last_id() if watchers[-1].all() else None
            watchers[-1].stream.connectionLost(None)  # type: ignore[arg-type]
        if i == away + back:
            watchers.append(world.open(*users, last_event_id=last_id, **options))
        act(action)
    if before + away < len(actions) <= before + away + back:
        watchers.append(world.open(*users, last_event_id=last_id, **options))
    world.clock.advance(60)  # the last batch goes out (and no one times out in between? they may)
    world.clock.advance(60)
    view: dict[str, dict] = {}
    for watcher in watchers:
        for name, _, data in watcher.all():
            if name == "snapshot":
                for userid, state in data["users"].items():
                    if state is not None:
                        view[userid] = state
            elif name == "batch":
                view.update({change["userid"]: change for change in data["changes"]})
            else:
                view[data["userid"]] = data
    status = world.store.get(users).result
    for userid in users:
        state = status[userid]
        if state is None:
            assert userid not in view
            continue
        shown, stored = view[userid], state.user
        assert (shown["online"], shown["status"]) == (stored.online, stored.status)
        # Offline: the last-seen time; online: "now" (a later same-status ping sends nothing).
        assert shown["time"] == stored.time if not stored.online else shown["time"] <= stored.time
    world.close()


def test_changes_while_the_state_is_read_come_after_it_once():
    """A store that answers reads late: live changes wait for the state; one the
    state already includes (by its position) is not sent again."""
    world = World()
    late: list[Deferred] = []
    read = world.store.get

    def get_late(userids):
        d: Deferred = Deferred()
        late.append(d)
        d.addCallback(lambda _: read(userids))
        return d

    world.store.get = get_late  # type: ignore[method-assign]
    world.ping("alice", "0")
    watcher = world.open("alice", "bob", changes_only=True, snapshot=True)
    world.ping("alice", "1")  # recorded before the read is made: in the state
    world.ping("bob", "2")
    assert watcher.new() == []
    late.pop().callback(None)
    events = watcher.new()
    assert [name for name, _, _ in events] == ["snapshot", None, None]
    # The state was read after both: each is sent again (a repeat of the latest,
    # which the contract tolerates), never older than what the snapshot showed.
    assert events[0][2]["users"]["bob"]["status"] == "2"
    assert [d["status"] for _, _, d in events[1:]] == ["1", "2"]


class NoFeedStore(MemoryStore):
    """A store that records no feed positions (as Redis, for now)."""

    def _publish(self, changes, marks=None) -> None:  # type: ignore[override]
        super()._publish(changes)


def test_without_a_feed_the_hub_applies_the_same_rule_once_per_change():
    world = World()
    world.store = NoFeedStore(world.clock, TIMEOUT)
    world.hub = Hub(world.store, world.clock)
    world.ping("alice", "0")
    watcher = world.open("alice", changes_only=True)
    device = world.open("alice", clientid="phone", changes_only=True)
    for status in "00110":
        world.ping("alice", status)
    world.ping("alice", "0", clientid="phone")
    world.ping("alice", "0", clientid="phone")
    world.leave("alice", "phone")
    world.leave("alice", "web")
    assert [(d["status"], d["online"]) for _, _, d in watcher.all()] == [
        ("0", True), ("1", True), ("0", True), ("0", False)]
    assert [d["online"] for _, _, d in device.all()] == [True, False]
    assert all("_" not in eid for _, eid, _ in watcher.all())  # not positions: no resume


def test_post_subscribe_through_the_route_table():
    """The whole site in memory: POST /subscribe is one route of the table, with its own
    body limit, refused as the GET routes are."""
    wire = Wire({"MAX_USERS_PER_STREAM": "2"})
    for query, body, code in [
        ("", b'{"users": ["a", "b", "c"]}', 400),
        ("", b'{"users": []}', 400),
        ("", b"not json", 400),
        ("?batch=0", b'{"users": ["a"]}', 400),
        ("", b'{"users": ["' + b"x" * SUBSCRIBE_BODY + b'"]}', 413),
    ]:
        assert wire.request("POST", "/subscribe" + query, body=body).status == code, (query, code)
    assert wire.request("GET", "/subscribe?user=a&changes=maybe").status == 400
    assert wire.request("PUT", "/subscribe", body=b"{}").status == 405
    wire.ping("a", b"0")
    response = wire.request("POST", "/subscribe?snapshot=1", body=b'{"users": ["a", "b"]}')
    assert response.status == 200
    (stream,) = wire.hub.streams
    assert isinstance(stream, OptionStream) and stream.userids == ("a", "b")
    assert b"event: snapshot" in response.body


def test_resume_reads_every_page_when_a_filtered_page_holds_fewer(monkeypatch):
    """A feed that filters a page after reading it (the Redis feed's way) may answer fewer
    changes than asked while more follow: resume reads on to the state's position."""
    monkeypatch.setattr(quiet, "RESUME_PAGE", 2)
    world = World()
    read = world.store.changes

    def filtered_late(after, limit, userids=None):
        def keep(page: Page) -> Page:
            kept = [(c, p) for c, p in zip(page.changes, page.positions) if c.userid in userids]
            return Page(tuple(c for c, _ in kept), page.next, tuple(p for _, p in kept))
        return read(after, limit).addCallback(keep)

    world.store.changes = filtered_late  # type: ignore[method-assign]
    world.ping("alice", "0")
    position = world.open("alice", "zoe", changes_only=True).last_id()
    for userid in ("bob", "carol", "dave", "erin", "frank"):  # pages of others' changes
        world.ping(userid, "0")
    world.ping("zoe", "1")
    resumed = world.open("alice", "zoe", changes_only=True, last_event_id=position).all()
    assert [d["userid"] for _, _, d in resumed] == ["zoe"]
