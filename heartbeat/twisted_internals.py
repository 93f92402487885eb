"""Every use of Twisted's private API in heartbeat, each behind one named function.

Twisted changes its private names without a deprecation cycle, so they live
here and nowhere else, each covered by a contract test
(``tests/test_twisted_contracts.py``) that fails loudly when a Twisted
release moves them. This module sits beneath every layer and imports
nothing of heartbeat.

What is used, and why:

- :func:`eager_write`: a TCP transport's write buffer (``_tempDataBuffer``,
  ``offset``, ``dataBuffer``), to send a small write at once when nothing
  is queued before it instead of waiting a reactor turn and registering
  the socket for writability twice (fan-out is one small write per stream).
- :func:`read_now`: ``Connection.doRead`` on a connection just accepted,
  whose request has nearly always arrived already.
- :class:`AcceptingPort`: ``tcp.Port``'s accept internals (``socket._accept``,
  ``_buildAddr``, ``sessionno``, ``transport``), to keep the kernel's accept
  queue empty under a reconnect burst, and to answer connections when no
  descriptor is left.
- :func:`listening_socket`: ``tcp.Port.socket``, the listening socket, to set
  options every accepted connection inherits once rather than per connection.
- :func:`endpoint_types`: ``twisted.internet.endpoints._serverParsers``, the
  endpoint prefixes built into Twisted, to tell ``host:port`` from an
  endpoint string.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Protocol

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IProtocol, ITransport
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

log = Logger()


class Writable(Protocol):
    """Anything written to: a transport, or a stand-in for one."""

    def write(self, data: bytes) -> None: ...

# As many connections as a listen backlog can hold (Linux caps it at 4096 by default).
ACCEPT_ALL = 4096
# Connections served between two looks at the kernel's queue: few enough that it stays
# nearly empty, enough that the look (an accept that fails with EAGAIN) costs little.
SERVED_BETWEEN_ACCEPTS = 16
# What accept says when this process (EMFILE) or the system (ENFILE) has no descriptor left.
NO_DESCRIPTOR = (errno.EMFILE, errno.ENFILE)
# Seconds between two log lines about connections refused for lack of descriptors.
REFUSALS_LOGGED_EVERY = 1.0
# Seconds a port with no descriptor left, not even its reserve, stops accepting.
ACCEPT_PAUSE = 0.1


def eager_write(transport: Writable, data: bytes) -> None:
    """Write ``data`` on ``transport``, sending it now if nothing is ahead of it.

    Whatever the socket does not take, or any error, goes through the
    transport as usual, so ordering, buffering and flow control stay
    Twisted's. Other transports (TLS) are written to as usual.
    """
    if (
        isinstance(transport, tcp.Connection)  # TCP and unix sockets, not TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._tempDataBuffer
        and transport.offset == len(transport.dataBuffer)
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):  # otherwise an error the transport will meet again
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


def read_now(transport: ITransport) -> None:
    """Read what a just-accepted TCP connection has already received, now.

    Saves a poll and a dispatch per connection in a burst; if nothing is in
    yet, or the client has gone, the reactor hears of it as usual. Other
    transports are left to the reactor.
    """
    if not isinstance(transport, tcp.Connection):
        return
    try:
        transport.doRead()
    except Exception:
        # As the reactor would: log, and drop the connection.
        log.failure("reading a new connection failed")
        transport.abortConnection()


def endpoint_types() -> set[str]:
    """The prefixes of every server endpoint string Twisted and its plugins parse."""
    from twisted.internet.endpoints import _serverParsers
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    from twisted.plugin import getPlugins

    return set(_serverParsers) | {
        parser.prefix for parser in getPlugins(IStreamServerEndpointStringParser)
    }


def take_bursts(port: IListeningPort, refusal: Callable[[], bytes]) -> None:
    """Make ``port``, if a plain IPv4 TCP port, an :class:`AcceptingPort`.

    ``refusal`` makes the bytes a connection gets when no descriptor is left
    (a ``503``); TLS ports close such a connection without them. IPv6 ports
    keep Twisted's loop, which also resolves scope ids.
    """
    if type(port) is tcp.Port and port.addressFamily == socket.AF_INET:
        port.__class__ = AcceptingPort
        assert isinstance(port, AcceptingPort)
        port.refusal = None if isinstance(port.factory, TLSMemoryBIOFactory) else refusal
        port.reserve = _reserve()


def listening_socket(port: IListeningPort) -> socket.socket | None:
    """The socket ``port`` listens on, if a TCP port (plain or TLS)."""
    if isinstance(port, tcp.Port) and isinstance(port.socket, socket.socket):
        return port.socket
    return None


def _reserve() -> int | None:
    """A descriptor held for the moment none is left (closed, then used to accept)."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class AcceptingPort(tcp.Port):
    """An IPv4 TCP port that keeps the kernel's queue of new connections empty.

    After a quiet spell Twisted's port accepts one connection per reactor
    turn, then 20 more each turn; under a reconnect burst the kernel's queue
    fills meanwhile and connections past the backlog wait a second for the
    SYN retry. Here every pending connection is accepted before each few are
    served, so the queue never holds more than came in meanwhile. It is also
    the lean path: no enum conversion of the address family per connection,
    no generator and log buffer per accept.

    Out of file descriptors, Twisted's loop closes each waiting connection
    with no answer and logs a line per connection. Here a descriptor is held
    in reserve: it is closed to accept one connection, which is answered
    ``refusal()`` (a ``503`` with ``Retry-After``) and closed, then taken
    again; the refusals are logged at most once a second, with a count.
    Other accept errors are left to Twisted's own loop.
    """

    refusal: Callable[[], bytes] | None = None
    reserve: int | None = None
    _refused = 0
    _refusals_logged: IDelayedCall | None = None

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
        accept = self.socket._accept  # type: ignore[union-attr]
        kind = int(self.socket.type)
        count = 0
        while count < budget:
            try:
                fd, address = accept()
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in NO_DESCRIPTOR:
                    self._refuse_pending(accept, budget - count)
                else:
                    self.numberAccepts = ACCEPT_ALL
                    super().doRead()
                break
            skt = socket.socket(socket.AF_INET, kind, 0, fd)
            try:
                protocol = self.factory.buildProtocol(self._buildAddr(address))  # type: ignore[union-attr]
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

    def _refuse_pending(self, accept: Callable[[], tuple[int, object]], budget: int) -> None:
        """No descriptor is left: answer up to ``budget`` waiting connections on the reserve."""
        for _ in range(budget):
            if self.reserve is None:
                self.reserve = _reserve()
                if self.reserve is None:  # not even that: let descriptors free up
                    self.stopReading()
                    self.reactor.callLater(ACCEPT_PAUSE, self._resume)  # type: ignore[attr-defined]
                    return
            os.close(self.reserve)
            self.reserve = None
            try:
                fd, _ = accept()
            except OSError:  # none waiting, or the descriptor went elsewhere
                self.reserve = _reserve()
                return
            self._answer_and_close(socket.socket(fileno=fd))
            self.reserve = _reserve()
            self._note_refused()

    def _answer_and_close(self, skt: socket.socket) -> None:
        try:
            # What the client sent is read first, so the close is a FIN, not a
            # reset that could overtake the answer.
            skt.recv(65536, socket.MSG_DONTWAIT)
        except OSError:
            pass
        try:
            if self.refusal is not None:
                skt.send(self.refusal(), socket.MSG_DONTWAIT)
            skt.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            skt.close()

    def _resume(self) -> None:
        if self.connected:
            self.startReading()

    def _note_refused(self) -> None:
        self._refused += 1
        if self._refusals_logged is None:
            self._log_refusals()

    def _log_refusals(self) -> None:
        self._refusals_logged = None
        if not self._refused:
            return
        log.warn("out of file descriptors: connections refused (answered 503 and closed): "
                 "{count}; raise the open files limit, or lower MAX_STREAMS", count=self._refused)
        self._refused = 0
        self._refusals_logged = self.reactor.callLater(  # type: ignore[attr-defined]
            REFUSALS_LOGGED_EVERY, self._log_refusals)

    def connectionLost(self, reason: Failure) -> None:
        if self.reserve is not None:
            os.close(self.reserve)
            self.reserve = None
        if self._refusals_logged is not None and self._refusals_logged.active():
            self._refusals_logged.cancel()
        super().connectionLost(reason)
