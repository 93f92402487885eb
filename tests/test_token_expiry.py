"""Streams end with their token (SPEC §1), on the one timer structure (``core/deadlines.py``)."""

from __future__ import annotations

import time

import jwt
from twisted.internet.task import Clock

from heartbeat.core.hub import Hub
from heartbeat.core.stream import Stream
from heartbeat.store.memory import MemoryStore
from tests.helpers.in_memory import StreamEnd, Wire, request_bytes

SECRET = "an expiry test secret that is long enough for HS256 and then some"


def open_stream(clock: Clock, expires: float | None) -> tuple[Hub, Stream, StreamEnd]:
    """A stream of bob's, attached to a hub to end at ``expires``."""
    hub = Hub(MemoryStore(clock, 60), clock)
    stream = Stream(("bob",), clock, 60)
    transport = StreamEnd()
    stream.take(transport)
    hub.attach(stream, expires)
    return hub, stream, transport


def test_an_expired_stream_that_reads_ends_cleanly():
    clock = Clock()
    hub, stream, transport = open_stream(clock, 3)
    clock.advance(2.9)
    assert not stream.closed
    clock.advance(0.1)
    assert transport.ended
    assert transport.disconnecting and stream.closed and stream not in hub.streams


def test_an_expired_stream_whose_client_does_not_read_is_dropped():
    clock = Clock()
    hub, stream, transport = open_stream(clock, 3)
    stream.pauseProducing()
    clock.advance(3)
    assert transport.disconnected
    assert not transport.ended


def test_a_stream_that_closes_first_is_forgotten_at_once():
    """Not kept until its token's end: a client reconnecting all day leaves nothing behind."""
    clock = Clock()
    hub, stream, transport = open_stream(clock, 1e6)
    assert len(hub._expiry) == 1
    stream.close()
    assert stream not in hub.streams and len(hub._expiry) == 0


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
