"""The orderly stop: streams end cleanly, pings in flight finish, then the store closes."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed

from heartbeat.daemon.service import DRAIN_TIMEOUT
from tests.helpers.in_memory import MemoryServer

CLAIM = {"X-User-Claim": '{"userid": "alice"}'}


def started() -> tuple[MemoryServer, list[bool]]:
    server = MemoryServer()
    closed: list[bool] = []
    server.store.close = lambda: closed.append(True) or succeed(None)
    server.service.startService()
    return server, closed


def test_streams_end_with_their_last_chunk_and_pings_in_flight_finish_first():
    server, closed = started()
    stream = server.send("GET", "/subscribe/alice")
    idle = server.send("POST", "/ping", b"0", CLAIM)
    pending: Deferred[None] = Deferred()
    server.store.ping = lambda ping: pending
    busy = server.send("POST", "/ping", b"1", CLAIM)

    stopping = server.service.stopService()

    assert stream.take().endswith(b"0\r\n\r\n")
    assert stream.transport.disconnecting and idle.transport.disconnecting
    # The ping in flight keeps its connection (and the store) until answered.
    assert not busy.transport.disconnecting
    stream.close()
    idle.close()
    assert not stopping.called and not closed
    pending.callback(None)
    answer = busy.take()
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer
    assert busy.transport.disconnecting and not closed
    busy.close()
    assert closed == [True]
    assert stopping.called


def test_clients_that_do_not_go_away_are_aborted_after_the_drain_timeout():
    server, closed = started()
    stuck = server.send("GET", "/subscribe/alice")
    stopping = server.service.stopService()
    server.clock.advance(DRAIN_TIMEOUT - 0.1)
    assert not stuck.transport.disconnected and not stopping.called
    server.clock.advance(0.1)
    assert stuck.transport.disconnected  # aborted
    stuck.close()
    assert stopping.called and closed == [True]


def test_a_request_started_while_draining_is_answered_then_closed():
    server, _ = started()
    pending: Deferred[None] = Deferred()
    server.store.ping = lambda ping: pending
    conn = server.connect()
    conn.send(b"POST /ping HTTP/1.1\r\nHost: x\r\n")  # headers still arriving
    server.service.stopService()
    assert not conn.transport.disconnecting
    conn.send(b'X-User-Claim: {"userid": "alice"}\r\nContent-Length: 1\r\n\r\n1')
    pending.callback(None)
    assert b"Connection: close" in conn.take()
    assert conn.transport.disconnecting


def test_drain_seconds_turns_readyz_off_at_once_and_spreads_stream_ends():
    server = MemoryServer(DRAIN_SECONDS="2")
    server.service.startService()
    streams = [server.send("GET", f"/subscribe/u{i}") for i in range(100)]
    stopping = server.service.stopService()
    assert server.send("GET", "/readyz").take().startswith(b"HTTP/1.1 503")
    assert server.send("GET", "/livez").take().startswith(b"HTTP/1.1 200")
    ended: list[int] = []
    for _ in range(20):  # two seconds, a tenth at a time
        ended.append(sum(1 for s in streams if s.transport.value().endswith(b"0\r\n\r\n")))
        assert server.ping_raw("alice", "0")[0] == 200  # still serving
        server.clock.advance(0.1)
    ended.append(sum(1 for s in streams if s.transport.value().endswith(b"0\r\n\r\n")))
    assert ended[-1] == 100 and ended[10] in range(45, 56), ended  # half by half-time
    assert all(b"retry: " in s.transport.value()[-40:] for s in streams)
    assert not stopping.called  # the ordered stop comes after the window
