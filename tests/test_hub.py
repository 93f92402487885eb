"""The hub's memory of each watched user's state, against a store that answers late."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from heartbeat.core.hub import Hub
from heartbeat.core.presence import Presence, UserState
from heartbeat.core.stream import Stream
from tests.helpers.in_memory import StreamEnd, Wire, request_bytes


class LateStore:
    """Subscribes at once; every read waits until the test answers it."""

    listener = None

    def __init__(self) -> None:
        self.reads: list[tuple[tuple[str, ...], Deferred]] = []

    def subscribe(self, userid: str) -> Deferred[None]:
        return succeed(None)

    def unsubscribe(self, userid: str) -> Deferred[None]:
        return succeed(None)

    def get(self, userids) -> Deferred[dict[str, UserState | None]]:
        d: Deferred[dict[str, UserState | None]] = Deferred()
        self.reads.append((tuple(userids), d))
        return d

    def answer(self, **pings: tuple[int, str] | None) -> None:
        """Each user's stored (time, status), or None."""
        (userids, d) = self.reads.pop(0)
        assert set(userids) == set(pings)
        d.callback({userid: None if ping is None else UserState(Presence(userid, *ping))
                    for userid, ping in pings.items()})


def open_stream(hub: Hub, *userids: str) -> tuple[Stream, StreamEnd]:
    stream = Stream(userids, Clock(), 60)
    transport = StreamEnd()
    stream.take(transport)
    hub.attach(stream)
    return stream, transport


def sent(transport: StreamEnd) -> list[str]:
    """The statuses written, in order."""
    return [frame.split(b'"status":"')[1].split(b'"')[0].decode()
            for frame in transport.value().split(b"\n\n") if b"data:" in frame]


def test_one_read_per_user_however_many_streams_open_meanwhile_and_after():
    store = LateStore()
    hub = Hub(store, Clock())
    early = [open_stream(hub, "alice")[1] for _ in range(3)]
    assert [userids for userids, _ in store.reads] == [("alice",)]
    store.answer(alice=(10, "1"))
    _, later = open_stream(hub, "alice")
    assert store.reads == []
    assert [sent(t) for t in early + [later]] == [["1"]] * 4


def test_a_live_ping_that_crosses_the_read_wins_over_it():
    store = LateStore()
    hub = Hub(store, Clock())
    _, first = open_stream(hub, "alice")
    hub.deliver(Presence("alice", 11, "2"))
    store.answer(alice=(10, "1"))  # read before the ping was stored
    _, later = open_stream(hub, "alice")
    assert sent(first) == ["2"] and sent(later) == ["2"]


def test_after_the_bus_is_lost_streams_read_the_store_until_resync():
    store = LateStore()
    hub = Hub(store, Clock())
    open_stream(hub, "alice")
    store.answer(alice=(10, "1"))
    hub.bus_lost()
    _, during = open_stream(hub, "alice")
    store.answer(alice=(12, "3"))  # stored while nobody heard it
    assert sent(during) == ["3"]
    _, after = open_stream(hub, "alice")
    assert store.reads == [] and sent(after) == ["3"]


def test_resync_teaches_the_hub_what_it_missed():
    store = LateStore()
    hub = Hub(store, Clock())
    _, watching = open_stream(hub, "alice", "bob")
    store.answer(alice=None)
    store.answer(bob=None)
    hub.bus_lost()
    hub.resync()
    store.answer(alice=(12, "3"), bob=None)
    assert sent(watching) == ["3"]
    _, later = open_stream(hub, "alice")
    assert store.reads == [] and sent(later) == ["3"]


def test_a_user_watched_here_is_sent_its_last_ping_without_reading_the_store():
    wire = Wire()
    wire.ping("alice", b"1")
    reads: list[object] = []
    get = wire.store.get
    wire.store.get = lambda userids: reads.append(tuple(userids)) or get(userids)
    first = wire.connect()
    first.send(request_bytes("GET", "/subscribe/alice"))
    wire.ping("alice", b"2")
    later = wire.connect()
    later.send(request_bytes("GET", "/subscribe/alice"))
    assert reads == [("alice",)]
    sent = later.take()
    assert b'"status":"2"' in sent and b'"status":"1"' not in sent


def test_a_user_whose_state_is_gone_after_a_resync_goes_offline_once_as_last_sent():
    store = LateStore()
    hub = Hub(store, Clock())
    _, watching = open_stream(hub, "alice")
    store.answer(alice=(5, "busy"))
    hub.deliver(Presence("alice", 7, "away"))
    _, never = open_stream(hub, "alice")  # sent the bus's state, the same
    hub.bus_lost()
    hub.resync()
    store.answer(alice=None)  # the store came back without alice
    for transport in (watching, never):
        frames = [f for f in transport.value().split(b"\n\n") if b"data:" in f]
        assert b'"time":7,"status":"away","userid":"alice","online":false' in frames[-1]
    hub.resync()
    store.answer(alice=None)  # and only once
    assert sent(watching) == ["busy", "away", "away"]
