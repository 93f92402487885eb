"""Slow subscribers (SPEC §3): bounded memory, the newest ping kept, a cut-off.

The channel is paused the way a real transport pauses it when its write
buffer fills (``pauseProducing``), so these tests drive the same Twisted
producer chain a stalled TCP client does.
"""

from __future__ import annotations

from twisted.logger import globalLogPublisher

from heartbeat.core.presence import Ping, Presence
from heartbeat.core.sse import Event
from heartbeat.core.stream import Stream
from tests.helpers.in_memory import Connection, Wire, events, request_bytes

PINGS = 20_000


def subscribe(wire: Wire, path: str = "/subscribe/alice") -> tuple[Connection, Stream]:
    conn = wire.connect()
    conn.send(request_bytes("GET", path))
    assert conn.response().status == 200
    (stream,) = [s for s in wire.hub.streams if s.transport is conn.transport.protocol]
    return conn, stream


def test_a_stalled_subscriber_holds_one_ping_and_the_others_get_every_ping():
    wire = Wire()
    slow, slow_stream = subscribe(wire)
    fast, _ = subscribe(wire)
    slow.transport.producer.pauseProducing()
    written = len(slow.transport.value())
    most_held = 0
    for n in range(PINGS):
        wire.store.ping(Ping("alice", n, str(n)))
        most_held = max(most_held, len(slow_stream.held))
    wire.clock.advance(wire.settings.keepalive)  # a keep-alive is no write for a held stream

    assert most_held == 1
    assert len(slow.transport.value()) == written
    assert [e["status"] for e in events(fast.response())] == [str(n) for n in range(PINGS)]

    slow.transport.producer.resumeProducing()
    assert [e["status"] for e in events(slow.response())] == [str(PINGS - 1)]
    assert slow_stream.held is None


def test_held_pings_are_one_per_user_and_the_newest():
    wire = Wire()
    conn, stream = subscribe(wire)
    conn.transport.producer.pauseProducing()
    # The hub only routes alice's pings here; held is keyed per user, so a
    # stream of several users keeps one of each.
    for n in range(3):
        stream.send(Event(Presence("alice", n, f"a{n}")))
        stream.send(Event(Presence("bob", n, f"b{n}")))
    assert {user: event.change.status for user, event in stream.held.items()} == {
        "alice": "a2", "bob": "b2"}


def test_a_stream_blocked_past_the_limit_is_cut_off_and_forgotten():
    wire = Wire({"STREAM_BLOCKED_TIMEOUT": "60"})
    conn, _ = subscribe(wire)
    conn.transport.producer.pauseProducing()
    wire.clock.advance(59)
    assert not conn.transport.disconnecting
    wire.clock.advance(1)
    assert conn.transport.disconnected  # aborted: its buffered bytes are dropped
    conn.close()
    assert wire.hub.streams == set()
    assert wire.hub.users == 0


def test_a_stream_that_catches_up_in_time_stays_open():
    wire = Wire({"STREAM_BLOCKED_TIMEOUT": "60"})
    conn, stream = subscribe(wire)
    for _ in range(3):
        conn.transport.producer.pauseProducing()
        wire.clock.advance(50)
        conn.transport.producer.resumeProducing()
    wire.clock.advance(100)
    assert not conn.transport.disconnecting
    assert stream in wire.hub.streams


def test_a_cleanly_closed_stream_ends_its_response_then_its_connection():
    """close() unregisters the producer (Twisted logs a failure otherwise)."""
    wire = Wire()
    conn, stream = subscribe(wire)
    failures: list[dict] = []

    def observer(event: dict) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        wire.hub.close_all()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert failures == []
    assert conn.response().complete
    assert conn.transport.disconnecting
    assert conn.transport.producer is None
