"""How the listening TCP port takes connections in a burst.

Clients reconnect all at once (a deploy, a network blip), so how fast
connections are taken off the kernel's queue decides whether a burst costs a
fraction of a second or a second more. Twisted's ``tcp.Port`` is made for
the usual trickle, and endpoints (parsed or adopted) build that class and
no other: :func:`take_bursts` turns the port an endpoint made into an
:class:`AcceptingPort` in place.
"""

from __future__ import annotations

import socket
from collections import deque

from twisted.internet import tcp
from twisted.internet.interfaces import IListeningPort, IProtocol
from twisted.logger import Logger

log = Logger()

# As many connections as a listen backlog can hold (Linux caps it at 4096 by default).
ACCEPT_ALL = 4096
# Connections served between two looks at the kernel's queue: few enough that it stays
# nearly empty (a burst brings one every ~30 us), enough that the look, an accept that
# fails with EAGAIN when none is waiting, costs little per connection.
SERVED_BETWEEN_ACCEPTS = 16


def take_bursts(port: IListeningPort) -> None:
    """Make ``port``, if a plain IPv4 TCP port, an :class:`AcceptingPort`."""
    if type(port) is tcp.Port and port.addressFamily == socket.AF_INET:
        port.__class__ = AcceptingPort


class AcceptingPort(tcp.Port):
    """An IPv4 TCP port that keeps the kernel's queue of new connections empty.

    After a quiet spell Twisted's port accepts one connection per reactor
    turn, then 20 more each turn. Under a reconnect burst the turns in
    between serve the connections already accepted, the kernel's queue
    fills meanwhile, and every connection past the backlog loses its
    handshake and waits a second for the retry (seen in the benchmark: one
    run in five took 1.2 s instead of 0.4 s for 5,000 streams, with ~400
    drops). Here every pending connection is accepted before each few are
    served, so the queue never holds more than came in meanwhile; the
    accepted ones wait their turn in a list of ours, which has no backlog
    to overflow.

    It is also the lean path: the socket module's ``accept`` converts the
    address family and type to enums for every connection, and Twisted's
    loop wraps each one in a generator and a log buffer (py-spy: an eighth
    of the burst). Errors, out of file descriptors included, are left to
    Twisted's own loop, which knows how to recover from them.
    """

    def doRead(self) -> None:
        accepted: deque[tuple[IProtocol, tcp.Server]] = deque()
        budget = ACCEPT_ALL  # then the reactor's other work gets a turn
        while True:
            budget -= self._accept_pending(accepted, budget)
            if not accepted:
                return
            for _ in range(min(SERVED_BETWEEN_ACCEPTS, len(accepted))):
                protocol, transport = accepted.popleft()
                try:
                    protocol.makeConnection(transport)
                except Exception:
                    # As Twisted's loop does: one failed connection must not stop the port.
                    log.failure("serving a new connection failed")
                    transport.abortConnection()

    def _accept_pending(self, accepted: deque[tuple[IProtocol, tcp.Server]], budget: int) -> int:
        """Accept up to ``budget`` waiting connections into ``accepted``; how many."""
        accept = self.socket._accept  # type: ignore[attr-defined]
        kind = int(self.socket.type)
        count = 0
        while count < budget:
            try:
                fd, address = accept()
            except BlockingIOError:
                break
            except OSError:
                self.numberAccepts = ACCEPT_ALL
                super().doRead()
                break
            skt = socket.socket(socket.AF_INET, kind, 0, fd)
            try:
                protocol = self.factory.buildProtocol(self._buildAddr(address))
                if protocol is None:
                    skt.close()
                    continue
                session = self.sessionno
                self.sessionno = session + 1
                transport = self.transport(skt, protocol, address, self, session, self.reactor)
            except Exception:
                log.failure("accepting a connection failed")
                skt.close()
                continue
            accepted.append((protocol, transport))
            count += 1
        return count
