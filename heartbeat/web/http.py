"""The HTTP layer under Klein: limits enforced while bytes arrive.

twisted.web buffers a whole request before any route runs, so the limits on
what a client may send live here, in the channel:

- the 4 KiB ping body: a declared ``Content-Length`` over it is answered 413
  before the body is read, and an undeclared (chunked) body stops being kept
  once it passes the limit;
- the request line and headers (``MAX_HEADER_BYTES``): 431;
- the time to send a whole request (``REQUEST_TIMEOUT``): 408. Twisted's own
  idle timeout restarts on every byte, so a client trickling one byte at a
  time (slowloris) would hold its connection for ever without this.

A connection starts as a :class:`~heartbeat.front.Front`, which opens the
usual event stream itself and hands everything else to a channel here.
Every refusal is a JSON error, like the API's own. The site also sees every
answer and every connection, so it reports ping outcomes to the metrics and,
at shutdown, drains its connections.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IPushProducer, ITransport
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from zope.interface import implementer

from heartbeat.core.ping_body import MAX_BODY
from heartbeat.web.errors import HttpError, error_body, render_error
from heartbeat.web.front import Deadlines, Front, Head
from heartbeat.web.routes import Meter

# How long a refused client may keep sending its body before it is cut off.
_LINGER = 2.0


class HeartbeatRequest(Request):
    """A request that keeps at most ``MAX_BODY`` bytes of its body."""

    body_too_large = False
    # When the complete request was handed to the app, for ping latency.
    received_at = 0.0

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        if self.content.tell() + len(data) > MAX_BODY:
            self.body_too_large = True
            self.content = BytesIO()
            return
        self.content.write(data)

    def process(self) -> None:
        """Refuse a URL or Host that is not UTF-8 here, as JSON.

        Klein answers those with an HTML 400 and logs a traceback per
        request, which hostile clients could use to flood the log.
        """
        try:
            unquote_to_bytes(self.path).decode("utf-8")
            self.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            self.write(render_error(self, HttpError(400, "URL or Host is not valid UTF-8")))
            self.finish()
            return
        self.received_at = self.channel.site.reactor.seconds()
        super().process()


@implementer(ITransport, IPushProducer)
class _Nowhere:
    """Where a handed-over channel's last writes go: the connection is not its any more."""

    # So the channel reads nothing more of what was buffered for it.
    disconnecting = True
    connected = False

    def write(self, data: bytes) -> None:
        pass

    def writeSequence(self, data: object) -> None:
        pass

    def loseConnection(self) -> None:
        pass

    def abortConnection(self) -> None:
        pass

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


_NOWHERE = _Nowhere()


class HeartbeatChannel(HTTPChannel):
    """Refuses oversized or too-slow requests with a JSON error, then closes.

    ``totalHeadersSize`` and ``request_timeout`` are set per connection by
    :class:`HeartbeatSite` from the settings.
    """

    request_timeout = 10.0
    # When the first request is due, counted from the connection's start
    # (set by the site: the connection began as a :class:`Front`).
    first_due: float | None = None
    _refused = False
    _linger: IDelayedCall | None = None
    _deadline: IDelayedCall | None = None

    # Set at shutdown: answer the request in progress, then hang up.
    _draining = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self._lost: Deferred[None] = Deferred()
        self.site.channels.add(self)
        # A client that connects and sends nothing is held to the deadline too.
        if self.first_due is None:
            self._arm_deadline()
        else:
            self._arm_deadline(max(0.0, self.first_due - self.site.reactor.seconds()))

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        # The first bytes of the next request on a kept-alive connection.
        if self._deadline is None and not self._handlingRequest:
            self._arm_deadline()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse_headers_too_large()
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse_headers_too_large()

    def allHeadersReceived(self) -> None:
        if self.length is not None and self.length > MAX_BODY:
            if self.site.metrics is not None and _is_ping(self._command, self._path):
                self.site.metrics.ping_answered(413, None)
            self._refuse(413, b"Request Entity Too Large",
                         f"request body is larger than {MAX_BODY} bytes")
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._disarm_deadline()
        super().allContentReceived()

    def rawDataReceived(self, data: bytes) -> None:
        # Body bytes that came in the same read as the refused headers.
        if not self._refused:
            super().rawDataReceived(data)

    def _respondToBadRequestAndDisconnect(self) -> None:
        """Twisted's own bad-request answer, as JSON like every other error."""
        self._refuse(400, b"Bad Request", "malformed HTTP request")

    def _refuse_headers_too_large(self) -> None:
        self._refuse(431, b"Request Header Fields Too Large",
                     f"request line and headers are larger than {self.totalHeadersSize} bytes")

    def _arm_deadline(self, timeout: float | None = None) -> None:
        if timeout is None:
            timeout = self.request_timeout
        self._deadline = self.callLater(timeout, self._too_slow)

    def _disarm_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self._refuse(408, b"Request Timeout",
                     f"request not received within {self.request_timeout:g} seconds")

    def _refuse(self, code: int, reason: bytes, message: str) -> None:
        """Answer ``code`` with a JSON error and close, reading nothing more.

        Only called before a request is dispatched, so no response of ours is
        in progress on the connection.
        """
        if self._refused:
            return
        self._refused = True
        self._disarm_deadline()
        body = error_body(message)
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: application/json\r\n"
            b"Connection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (code, reason, len(body), body)
        )
        # Stop the line parser from handing on what is left of this read.
        self.setRawMode()
        # Half-close and drain: closing with unread input would reset the
        # connection and could destroy the answer before the client reads it.
        self.setTimeout(None)
        half_close = getattr(self.transport, "loseWriteConnection", None)
        (half_close or self.transport.loseConnection)()
        self._linger = self.callLater(_LINGER, self.transport.abortConnection)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        if self._draining:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return bool(super().checkPersistence(request, version))

    def hand_over(self) -> ITransport:
        """Leave this connection to whoever takes its transport, returned.

        An event stream whose headers are sent needs nothing more of
        twisted.web, yet the channel and its request (parsers, header
        tables, Deferreds) would stay for the connection's life: over half
        an idle stream's memory. The router still ends its request as
        usual; the channel then writes into nowhere and is collected.
        """
        transport = self.transport
        transport.unregisterProducer()  # the channel was its producer
        self._disarm_deadline()
        self.site.channels.discard(self)
        self.persistent = False
        self.transport = self._networkProducer = _NOWHERE
        return transport

    def hang_up(self) -> Deferred[None]:
        """Close once the request in progress is answered; fires when closed.

        Closing lets the transport flush first, so a stream's last chunk
        reaches the client before the process exits.
        """
        self._draining = True
        self.persistent = False
        for request in self.requests:
            if not request.startedWriting:
                request.setHeader(b"Connection", b"close")
        if not self.requests:
            self.loseConnection()
        return self._lost

    def connectionLost(self, reason: Failure) -> None:
        self._disarm_deadline()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)
        self.site.channels.discard(self)
        self._lost.callback(None)


def _is_ping(method: bytes | None, uri: bytes | None) -> bool:
    return method == b"POST" and uri is not None and uri.split(b"?", 1)[0] == b"/ping"


def _no_stream(head: Head, transport: ITransport) -> bool:
    return False


class HeartbeatSite(Site):
    """Starts each connection as a :class:`Front`; builds the HTTP channels
    it hands the rest to, with this process's header-size and time limits.

    ``open_stream`` opens the event streams a front answers itself.
    """

    protocol = HeartbeatChannel
    requestFactory = HeartbeatRequest

    def __init__(self, resource: IResource, *, reactor: Any = None,
                 metrics: Meter | None = None,
                 max_header_bytes: int = HTTPChannel.totalHeadersSize,
                 request_timeout: float = HeartbeatChannel.request_timeout,
                 open_stream: Callable[[Head, ITransport], bool] = _no_stream) -> None:
        # Ping bodies are parsed by heartbeat.core.ping_body; twisted.web's own form
        # parsing (request.args) runs the email package's header parser on
        # every POST: a third of the ping path's time.
        super().__init__(resource, reactor=reactor, parsePOSTFormSubmission=False)
        self.max_header_bytes = max_header_bytes
        self.request_timeout = request_timeout
        self.metrics = metrics
        self.open_stream = open_stream
        self.channels: set[HeartbeatChannel] = set()
        self.deadlines = Deadlines(self.reactor, request_timeout)

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        return Front(self)

    def http_channel(self, first_due: float) -> HeartbeatChannel:
        """A channel for a connection whose first request is due at ``first_due``."""
        channel = super().buildProtocol(None)
        channel.first_due = first_due
        channel.totalHeadersSize = self.max_header_bytes
        # One line may be as long as all of them together, no longer.
        channel.MAX_LENGTH = self.max_header_bytes
        channel.request_timeout = self.request_timeout
        return channel

    def log(self, request: Request) -> None:
        """No access log (a line per ping would dwarf everything else); count pings."""
        if self.metrics is not None and _is_ping(request.method, request.uri):
            self.metrics.ping_answered(
                request.code, self.reactor.seconds() - request.received_at
            )

    def drain(self, timeout: float) -> Deferred[None]:
        """Hang up every connection as its request in progress is answered.

        Fires when all are closed, or after ``timeout`` seconds, when the
        rest (clients that stopped reading) are aborted.
        """
        deadline = self.reactor.callLater(timeout, self._abort_all)
        self.deadlines.stop()
        for front in self.deadlines.pending():
            front.close()

        def closed(_: object) -> None:
            if deadline.active():
                deadline.cancel()

        closing = DeferredList([channel.hang_up() for channel in tuple(self.channels)])
        return closing.addCallback(closed)

    def _abort_all(self) -> None:
        for channel in tuple(self.channels):
            channel.transport.abortConnection()
