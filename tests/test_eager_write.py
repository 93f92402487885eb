"""eager_write: straight to the socket only when nothing is queued before it."""

import socket

from twisted.internet.protocol import Protocol
from twisted.internet.tcp import Connection
from twisted.internet.testing import MemoryReactor, StringTransport

from heartbeat.twisted_internals import eager_write


def connection() -> tuple[Connection, socket.socket, MemoryReactor]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    reactor = MemoryReactor()
    conn = Connection(ours, Protocol(), reactor)
    conn.connected = True
    return conn, theirs, reactor


def read_all(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    data = b""
    while True:
        try:
            piece = sock.recv(1 << 20)
        except BlockingIOError:
            return data
        if not piece:
            return data
        data += piece


def test_nothing_queued_goes_straight_out_without_registering_for_writes():
    conn, peer, reactor = connection()
    eager_write(conn, b"event one")
    assert read_all(peer) == b"event one"
    assert conn not in reactor.getWriters()


def test_what_the_socket_cannot_take_is_queued_and_keeps_its_order():
    conn, peer, reactor = connection()
    big = bytes(range(256)) * 4096  # 1 MiB: far more than the send buffer
    eager_write(conn, big)
    assert conn in reactor.getWriters()  # the rest waits for writability
    eager_write(conn, b"after")  # must queue behind, not jump ahead
    received = read_all(peer)
    while conn.dataBuffer[conn.offset:] or conn._tempDataBuffer:
        conn.doWrite()
        received += read_all(peer)
    assert received == big + b"after"


def test_other_transports_are_written_as_usual():
    transport = StringTransport()
    eager_write(transport, b"x")
    assert transport.value() == b"x"
