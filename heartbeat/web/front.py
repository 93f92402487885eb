"""Where every connection starts: the usual event-stream request opened at once.

Clients open streams in bursts (every browser at once after a deploy or a
network blip), and there twisted.web is the daemon's cost: for each
connection an HTTP channel with two timers, a line parser, a request with
its header tables and Deferreds, all dropped as soon as the stream takes
the connection over. py-spy of a 5,000-stream burst put that at over half
its time. A connection's first bytes are nearly always one small, complete
``GET /subscribe/…``; :class:`Front` answers exactly that from one parse of
the bytes, with the headers twisted.web would send. Anything else (another
route, HTTP/1.0, HEAD, a body, an odd header, a request heartbeat would
refuse) goes to twisted.web with the bytes already read, so every rule and
every error has one home.
"""

from __future__ import annotations

import re
from collections import deque
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, IProtocol, IReactorTime, ITransport
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString, parse_qs
from twisted.web.server import version
from zope.interface import implementer

from heartbeat.core.sse import RETRY_CHUNK, STREAM_HEADERS

if TYPE_CHECKING:
    from heartbeat.web.http import HeartbeatSite

log = Logger()

_STREAM_PREFIX = b"GET /subscribe"
# RFC 9110 field names, and values on one line (no obsolete folding).
_FIELDS = re.compile(rb"(?:[-!#$%&'*+.^_`|~0-9A-Za-z]+:[^\r\n]*\r\n)*")
# Requests that need twisted.web's handling: a body, an expectation, a
# connection that must close after the answer.
_NOT_HERE = frozenset((b"content-length", b"transfer-encoding", b"expect", b"upgrade"))


class Head:
    """The request line and headers of a stream request, as the routes read them.

    Offers the part of ``IRequest`` that identity and the user list use.
    """

    __slots__ = ("path", "query", "headers")

    def __init__(self, path: bytes, query: bytes, headers: dict[bytes, bytes]) -> None:
        self.path = path
        self.query = query
        self.headers = headers

    def getHeader(self, name: bytes) -> bytes | None:
        return self.headers.get(name.lower())

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        return parse_qs(self.query, 1) if self.query else {}


def parse_head(head: bytes) -> Head | None:
    """``head`` (request line and headers, no blank line) if it is a plain
    HTTP/1.1 GET that twisted.web would accept as it is; else None."""
    line, _, fields = head.partition(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[2] != b"HTTP/1.1":
        return None
    if fields:
        fields += b"\r\n"
        if _FIELDS.fullmatch(fields) is None:
            return None
    lines = fields.split(b"\r\n")[:-1]
    headers = {}
    for field in lines:
        name, _, value = field.partition(b":")
        headers[name.lower()] = value.strip(b" \t")
    # A repeated header is read first-wins in some places of twisted.web,
    # last-wins in others: not for here.
    if len(headers) != len(lines) or not _NOT_HERE.isdisjoint(headers):
        return None
    connection = headers.get(b"connection")
    if connection is not None and connection.lower() != b"keep-alive":
        return None
    path, _, query = parts[1].partition(b"?")
    return Head(path, query, headers)


@implementer(IProtocol)
class Front:
    """A connection until its first request is known."""

    __slots__ = ("_site", "transport", "_buffered", "_due")

    def __init__(self, site: HeartbeatSite) -> None:
        self._site = site
        self.transport: Any = None
        self._buffered = b""
        self._due = 0.0

    def makeConnection(self, transport: ITransport) -> None:
        self.transport = transport
        self.connectionMade()
        if isinstance(transport, Connection):
            self._read_now(transport)

    def _read_now(self, transport: Connection) -> None:
        """Read the request now if it is in, rather than after a trip through the reactor.

        In a burst a connection's request has nearly always arrived by the
        time it is accepted; reading it at once saves a poll and a dispatch
        per connection (callgrind: 14% of a burst's instructions). If nothing
        is in yet, or the client has gone, the reactor hears of it as usual.
        """
        try:
            transport.doRead()
        except Exception:
            # As the reactor would: log, and drop the connection.
            log.failure("reading a new connection failed")
            transport.abortConnection()

    def connectionMade(self) -> None:
        self._due = self._site.deadlines.add(self)

    def dataReceived(self, data: bytes) -> None:
        if self._buffered:
            data = self._buffered + data
        end = data.find(b"\r\n\r\n")
        if end < 0:
            # Keep reading only what could still become a stream request.
            if len(data) < self._site.max_header_bytes and (
                _STREAM_PREFIX.startswith(data[:len(_STREAM_PREFIX)])
            ):
                self._buffered = data
                return
        elif end + 4 == len(data) and len(data) <= self._site.max_header_bytes and data.isascii():
            head = parse_head(data[:end])
            if head is not None and self._site.open_stream(head, self.transport):
                self._leave()
                return
        self._to_http(data)

    def too_slow(self) -> None:
        """The request deadline passed with the request still incomplete."""
        if self.transport is not None:
            self._to_http(self._buffered)

    def close(self) -> None:
        """Shutdown: nothing was asked yet, so nothing is owed."""
        if self.transport is not None:
            self.transport.loseConnection()

    def _to_http(self, data: bytes) -> None:
        """twisted.web takes over, from the first byte, within the same deadline."""
        transport = self.transport
        self._leave()
        channel = self._site.http_channel(self._due)
        transport.protocol = channel
        channel.makeConnection(transport)
        if data:
            channel.dataReceived(data)

    def _leave(self) -> None:
        self.transport = None
        self._buffered = b""

    def connectionLost(self, reason: Failure) -> None:
        self._leave()


class Deadlines:
    """One timer for every connection still sending its first request.

    Every connection has the same time to send a request, so they fall due
    in the order they came: a queue and a timer for its head, rather than a
    timer per connection (arming and cancelling thousands of those was a
    tenth of a connection burst).
    """

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self._clock = clock
        self._timeout = timeout
        self._queue: deque[tuple[float, Front]] = deque()
        self._timer: IDelayedCall | None = None

    def add(self, front: Front) -> float:
        """Watch ``front``; returns when it falls due."""
        due = self._clock.seconds() + self._timeout
        self._queue.append((due, front))
        if self._timer is None:
            self._timer = self._clock.callLater(self._timeout, self._expire)
        return due

    def pending(self) -> tuple[Front, ...]:
        return tuple(front for _, front in self._queue)

    def _expire(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        queue = self._queue
        while queue and queue[0][0] <= now:
            queue.popleft()[1].too_slow()
        if queue:
            self._timer = self._clock.callLater(queue[0][0] - now, self._expire)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


@lru_cache(maxsize=64)
def stream_response(headers: tuple[tuple[bytes, bytes], ...], second: int) -> bytes:
    """An event stream's response head and first chunk, as twisted.web writes them.

    Built once a second per set of ``headers`` (CORS), however many
    streams open in that second.
    """
    lines = [b"HTTP/1.1 200 OK", b"Server: " + version, b"Date: " + datetimeToString(second)]
    lines.extend(name + b": " + value for name, value in headers)
    lines.extend(name + b": " + value for name, value in STREAM_HEADERS)
    lines.append(b"Transfer-Encoding: chunked\r\n\r\n" + RETRY_CHUNK)
    return b"\r\n".join(lines)
