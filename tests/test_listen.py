"""The listening port under a connection burst, on real sockets."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol

from heartbeat.service import _ObservedEndpoint


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
