"""The listening port under a connection burst, on real sockets."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol

from heartbeat.config import load_settings
from heartbeat.service import _ObservedEndpoint
from heartbeat.tap import build_service
from tests.wire import request_bytes


@pytest_twisted.ensureDeferred
async def test_every_pending_connection_is_accepted_in_one_turn():
    """Twisted's port would take 100 now (after a quiet spell, 1) and more on later turns."""
    accepted: list[Protocol] = []

    class Counting(Factory):
        def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
            accepted.append(Protocol())
            return accepted[-1]

    endpoint = _ObservedEndpoint(TCP4ServerEndpoint(reactor, 0, backlog=1024, interface="127.0.0.1"))
    port = await endpoint.listen(Counting())
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
async def test_a_stream_whose_request_is_in_opens_as_it_is_accepted():
    """No reactor turn between accepting a connection and answering its request."""
    settings = load_settings({"listen": "tcp:0:interface=127.0.0.1"}, environ={}, dotenv={})
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
