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

from twisted.internet import tcp
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

log = Logger()

# As many connections as a listen backlog can hold (Linux caps it at 4096 by default).
ACCEPT_ALL = 4096


def take_bursts(port: IListeningPort) -> None:
    """Make ``port``, if a plain IPv4 TCP port, an :class:`AcceptingPort`."""
    if type(port) is tcp.Port and port.addressFamily == socket.AF_INET:
        port.__class__ = AcceptingPort


class AcceptingPort(tcp.Port):
    """An IPv4 TCP port that takes every pending connection each time it is readable.

    After a quiet spell Twisted's port accepts one connection per reactor
    turn, then 20 more each turn. Under a reconnect burst the turns in
    between serve the connections already accepted, the kernel's queue
    fills meanwhile, and every connection past the backlog loses its
    handshake and waits a second for the retry (seen in the benchmark: one
    run in five took 1.2 s instead of 0.4 s for 5,000 streams, with ~400
    drops). Accepting is cheap next to serving, so this takes all at once.

    It is also the lean path: the socket module's ``accept`` converts the
    address family and type to enums for every connection, and Twisted's
    loop wraps each one in a generator and a log buffer (py-spy: an eighth
    of the burst). Errors, out of file descriptors included, are left to
    Twisted's own loop, which knows how to recover from them.
    """

    def doRead(self) -> None:
        try:
            accept = self.socket._accept  # type: ignore[attr-defined]
            kind = int(self.socket.type)
            for _ in range(ACCEPT_ALL):
                try:
                    fd, address = accept()
                except BlockingIOError:
                    return
                except OSError:
                    self.numberAccepts = ACCEPT_ALL
                    return super().doRead()
                self._serve(socket.socket(socket.AF_INET, kind, 0, fd), address)
        except Exception:
            # As Twisted's loop does: one failed connection must not stop the port.
            log.failure("accepting a connection failed")

    def _serve(self, skt: socket.socket, address: tuple[str, int]) -> None:
        """What Twisted's loop does with each connection it accepts."""
        protocol = self.factory.buildProtocol(self._buildAddr(address))
        if protocol is None:
            skt.close()
            return
        session = self.sessionno
        self.sessionno = session + 1
        transport = self.transport(skt, protocol, address, self, session, self.reactor)
        protocol.makeConnection(transport)
