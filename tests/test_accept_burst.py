"""The listening port under a connection burst, on real sockets."""

from __future__ import annotations

import errno
import socket

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol

from heartbeat.daemon.config import load_settings
from heartbeat.daemon.tap import build_service
from heartbeat.twisted_internals import SERVED_BETWEEN_ACCEPTS, AcceptingPort, take_bursts
from tests.helpers.in_memory import request_bytes


@pytest_twisted.ensureDeferred
async def test_every_pending_connection_is_accepted_in_one_turn():
    """Twisted's port would take 100 now (after a quiet spell, 1) and more on later turns."""
    accepted: list[Protocol] = []

    class Counting(Factory):
        def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
            accepted.append(Protocol())
            return accepted[-1]

    endpoint = TCP4ServerEndpoint(reactor, 0, backlog=1024, interface="127.0.0.1")
    port = await endpoint.listen(Counting())
    take_bursts(port, lambda: b"")
    clients = []
    try:
        for burst in (1, 300):
            for _ in range(burst):
                client = socket.create_connection(("127.0.0.1", port.getHost().port))
                clients.append(client)
            port.doRead()  # what the reactor does when the socket is readable
            assert len(accepted) == len(clients)
    finally:
        for client in clients:
            client.close()
        for protocol in accepted:
            protocol.transport.abortConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_connections_that_come_meanwhile_are_accepted_between_a_few_served():
    """The kernel's queue is emptied every few connections served, not after all of them."""
    few = SERVED_BETWEEN_ACCEPTS
    events: list[str] = []
    clients: list[socket.socket] = []

    def connect() -> None:
        clients.append(socket.create_connection(("127.0.0.1", port.getHost().port)))

    class Recording(Protocol):
        def __init__(self, number: int) -> None:
            self.number = number

        def connectionMade(self) -> None:
            events.append(f"serve {self.number}")
            if self.number == 0:
                connect()  # one more comes while the first is served

    class Numbering(Factory):
        def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
            number = sum(e.startswith("accept") for e in events)
            events.append(f"accept {number}")
            return Recording(number)

    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(Numbering())
    take_bursts(port, lambda: b"")
    try:
        for _ in range(few + 1):
            connect()
        port.doRead()
        assert events == (
            [f"accept {n}" for n in range(few + 1)]
            + [f"serve {n}" for n in range(few)]
            + [f"accept {few + 1}", f"serve {few}", f"serve {few + 1}"]
        )
    finally:
        for client in clients:
            client.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_stream_whose_request_is_in_opens_as_it_is_accepted():
    """No reactor turn between accepting a connection and answering its request."""
    settings = load_settings({"listen": "tcp:0:interface=127.0.0.1", "database": ":memory:"},
                             environ={}, dotenv={})
    service = build_service(settings, reactor, serverFromString(reactor, settings.listen))
    service.startService()
    port = await service.when_listening()
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        client.sendall(request_bytes("GET", "/subscribe/alice"))
        port.doRead()
        client.settimeout(5)
        assert client.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
        assert len(service.hub.streams) == 1
    finally:
        client.close()
        await service.stopService()


class _Listening:
    """A listening socket stand-in: what the lean loop and Twisted's loop call."""

    type = socket.SOCK_STREAM

    def __init__(self, first_error: int) -> None:
        self.first_error = first_error
        self.twisted_accepts = 0

    def _accept(self):  # type: ignore[no-untyped-def]
        raise OSError(self.first_error, "refused")

    def accept(self):  # type: ignore[no-untyped-def]
        self.twisted_accepts += 1
        raise BlockingIOError(errno.EAGAIN, "no more")


@pytest_twisted.ensureDeferred
async def test_other_accept_errors_are_left_to_twisted_and_a_bad_connection_stops_nothing():
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    failing = Factory()
    failing.buildProtocol = lambda addr: 1 / 0  # type: ignore[method-assign]
    port = await endpoint.listen(failing)
    take_bursts(port, lambda: b"")
    try:
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        port.doRead()  # the failure is logged, not raised into the reactor
        client.close()
        assert port.connected
        listening, port.socket = port.socket, _Listening(errno.ENOBUFS)
        port.doRead()
        assert port.socket.twisted_accepts == 1
        port.socket = listening
    finally:
        await port.stopListening()


class _Exhausted:
    """A listening socket out of descriptors until its reserve is closed, then ``waiting``'s."""

    type = socket.SOCK_STREAM

    def __init__(self, waiting: socket.socket, port: AcceptingPort) -> None:
        self.waiting = waiting
        self.port = port
        self.accepted = 0

    def _accept(self):  # type: ignore[no-untyped-def]
        if self.port.reserve is not None:
            raise OSError(errno.EMFILE, "Too many open files")
        if self.accepted:
            raise BlockingIOError(errno.EAGAIN, "no more")
        self.accepted += 1
        return self.waiting._accept()  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_out_of_descriptors_a_connection_is_answered_503_on_the_reserve():
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(Factory.forProtocol(Protocol))
    take_bursts(port, lambda: b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\r\n")
    assert isinstance(port, AcceptingPort) and port.reserve is not None
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    client = socket.create_connection(other.getsockname())
    try:
        client.sendall(request_bytes("GET", "/health"))
        listening, port.socket = port.socket, _Exhausted(other, port)
        port.doRead()
        port.socket = listening
        client.settimeout(5)
        answer = b""
        while chunk := client.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer
        assert port.reserve is not None  # held again for the next time
    finally:
        client.close()
        other.close()
        await port.stopListening()
    assert port.reserve is None
