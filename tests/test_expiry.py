"""Streams end with their token (SPEC §1): one heap and one timer for every stream."""

from __future__ import annotations

import time

import jwt
from twisted.internet.task import Clock

from heartbeat.core.expiry import Expiry
from heartbeat.core.stream import Stream
from tests.wire import StreamEnd, Wire, request_bytes

SECRET = "an expiry test secret that is long enough for HS256 and then some"


class Ending:
    """A stream as the heap sees it: records when it was told to end."""

    def __init__(self, clock: Clock, ended: list[tuple[str, float]], name: str) -> None:
        self.closed = False
        self._clock = clock
        self._ended = ended
        self.name = name

    def expire(self) -> None:
        self.closed = True
        self._ended.append((self.name, self._clock.seconds()))


def test_each_stream_ends_at_its_own_time_with_one_timer_for_all():
    clock = Clock()
    expiry = Expiry(clock)
    ended: list[tuple[str, float]] = []
    for name, end in (("c", 30), ("a", 10), ("b", 20), ("a2", 10)):
        expiry.add(Ending(clock, ended, name), end)
        assert len(clock.getDelayedCalls()) == 1
    clock.advance(9.9)
    assert ended == []
    clock.advance(0.1)
    assert ended == [("a", 10), ("a2", 10)]
    clock.advance(10)
    assert ended == [("a", 10), ("a2", 10), ("b", 20)]
    clock.advance(100)
    assert [name for name, _ in ended] == ["a", "a2", "b", "c"]
    assert clock.getDelayedCalls() == [] and len(expiry) == 0


def test_a_sooner_end_moves_the_timer_a_later_one_does_not():
    clock = Clock()
    expiry = Expiry(clock)
    ended: list[tuple[str, float]] = []
    expiry.add(Ending(clock, ended, "late"), 100)
    (timer,) = clock.getDelayedCalls()
    expiry.add(Ending(clock, ended, "later"), 200)
    assert clock.getDelayedCalls() == [timer]
    expiry.add(Ending(clock, ended, "soon"), 5)
    (moved,) = clock.getDelayedCalls()
    assert moved.getTime() == 5
    clock.advance(5)
    assert ended == [("soon", 5)]
    assert clock.getDelayedCalls()[0].getTime() == 100


def test_an_end_already_past_ends_the_stream_on_the_next_turn():
    clock = Clock()
    clock.advance(50)
    expiry = Expiry(clock)
    ended: list[tuple[str, float]] = []
    expiry.add(Ending(clock, ended, "gone"), 40)
    clock.advance(0)
    assert ended == [("gone", 50)]


def test_a_stream_closed_early_is_not_ended_again_and_is_swept():
    clock = Clock()
    expiry = Expiry(clock)
    ended: list[tuple[str, float]] = []
    early = Ending(clock, ended, "early")
    expiry.add(early, 10)
    early.closed = True
    clock.advance(10)
    assert ended == []
    # Streams that close long before their end are dropped once the heap
    # has doubled, not kept until they fall due.
    streams = [Ending(clock, ended, str(i)) for i in range(5000)]
    for stream in streams:
        expiry.add(stream, 1e6)
        stream.closed = True
    assert len(expiry) < 2048
    assert len(clock.getDelayedCalls()) == 1


def open_stream(clock: Clock) -> tuple[Stream, StreamEnd]:
    stream = Stream(("bob",), clock, 60)
    transport = StreamEnd()
    stream.take(transport)
    return stream, transport


def test_an_expired_stream_that_reads_ends_cleanly():
    clock = Clock()
    stream, transport = open_stream(clock)
    Expiry(clock).add(stream, 3)
    clock.advance(3)
    assert transport.ended
    assert transport.disconnecting and stream.closed


def test_an_expired_stream_whose_client_does_not_read_is_dropped():
    clock = Clock()
    stream, transport = open_stream(clock)
    stream.pauseProducing()
    Expiry(clock).add(stream, 3)
    clock.advance(3)
    assert transport.disconnected
    assert not transport.ended


def token(**claims: object) -> str:
    return jwt.encode({"userid": "alice", **claims}, SECRET, algorithm="HS256")


def test_the_daemon_ends_a_stream_at_its_tokens_exp_and_not_one_without():
    wire = Wire({"JWT_SECRET": SECRET})
    exp = int(time.time()) + 600
    expiring, lasting = wire.connect(), wire.connect()
    expiring.send(request_bytes("GET", f"/subscribe/bob?token={token(exp=exp)}"))
    lasting.send(request_bytes("GET", "/subscribe?user=bob",
                               {"Authorization": f"Bearer {token()}"}))
    assert expiring.response().status == lasting.response().status == 200
    assert len(wire.hub.streams) == 2
    # The wire's clock starts at 0; the token's exp is in epoch seconds.
    wire.clock.advance(exp - 1)
    assert not expiring.response().complete
    wire.clock.advance(1)
    assert expiring.response().complete
    assert not lasting.response().complete
    assert len(wire.hub.streams) == 1
