"""The HTTP edge: one protocol object for the whole life of each connection.

Every byte a client sends is parsed once, by llhttp (``httptools``), in
:class:`HttpConnection`. The requests that are nearly all the traffic —
``POST /ping`` and every ``GET``/``HEAD /subscribe…`` — are answered here,
from that parse, with no twisted.web objects at all; when a stream starts,
the same object stays the connection's protocol and the stream becomes its
producer. Every other request (``/status``, ``/health``, ``/metrics``,
``OPTIONS``, wrong methods, unknown paths) is handed to the Klein app as a
twisted.web ``Request`` whose channel is a small adapter over this
connection (:mod:`heartbeat.web.handoff`), so routing rules and errors for
those have one home. The connection's protocol never changes, so TLS
(whose wrapper owns the transport's protocol) works like TCP.

Requests are answered in order: pipelined ones wait in a queue while an
earlier answer is pending (a ping waiting for the store). The limits of
SPEC §5 are enforced while bytes arrive: request line and headers over
``MAX_HEADER_BYTES`` → 431, a body over 4 KiB → 413 (at once when
``Content-Length`` says so), a request not complete within
``REQUEST_TIMEOUT`` → 408, a malformed one → 400; each as JSON, then the
connection is closed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httptools
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolNegotiationFactory,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import parse_qs
from twisted.web.server import Site
from zope.interface import implementer

from heartbeat.core.deadlines import Deadlines
from heartbeat.core.errors import Refused
from heartbeat.core.identity import Reading
from heartbeat.core.ping_body import MAX_BODY
from heartbeat.core.sse import STREAM_HEADERS
from heartbeat.core.stream import Stream
from heartbeat.twisted_internals import eager_write, read_now
from heartbeat.web import responses
from heartbeat.web.api import Api, subscribe_target
from heartbeat.web.errors import HttpError, as_http, internal_error
from heartbeat.web.handoff import hand_to_site

log = Logger()

# How long a refused client may keep sending before it is cut off: closing
# with unread input would reset the connection and could destroy the answer.
LINGER = 2.0
# Complete requests queued behind a pending answer before reading pauses.
PIPELINE_DEPTH = 16


class ParsedRequest:
    """One request as llhttp parsed it: what the routes and core rules read.

    ``getHeader`` and ``args`` are what :class:`~heartbeat.core.request_view.RequestView`
    asks of a request; the raw headers are kept, in order, for the hand-over.
    """

    __slots__ = (
        "method", "url", "path", "query", "version", "raw_headers", "headers",
        "body", "too_large", "keep_alive", "received_at", "continue_owed", "_args",
    )

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.path = b""
        self.query = b""
        self.version = "1.1"
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.too_large = False
        self.keep_alive = True
        self.received_at = 0.0
        self.continue_owed = False
        self._args: dict[bytes, list[bytes]] | None = None

    def getHeader(self, name: bytes) -> bytes | None:
        return self.headers.get(name.lower())

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        if self._args is None:
            self._args = parse_qs(self.query, 1)
        return self._args

    @property
    def is_head(self) -> bool:
        return self.method == b"HEAD"


class _Stop(Exception):
    """Raised from a parser callback to stop parsing what is left of a read."""


def _split_url(url: bytes) -> tuple[bytes, bytes]:
    """Path and query of an origin-form (``/a?b``) or absolute-form URL."""
    if not url.startswith(b"/"):
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            return url, b""
        return parsed.path or b"/", parsed.query or b""
    path, _, query = url.partition(b"?")
    return path, query.partition(b"#")[0]


@implementer(IProtocol)
class HttpConnection:
    """One client connection: its parser, its queue of requests, then maybe its stream."""

    __slots__ = (
        "edge", "transport", "_parser", "_current", "_head_bytes", "_queue", "_busy",
        "_stream", "_closing", "_draining", "_paused", "_lost", "_linger", "_handed",
        "_in_head", "_head_raw", "_answering",
    )

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.transport: Any = None
        self._parser: httptools.HttpRequestParser | None = None
        self._current: ParsedRequest | None = None
        self._head_bytes = 0
        # A list, not a deque: it is nearly always empty, and an empty deque
        # costs a whole block of memory on every open stream.
        self._queue: list[ParsedRequest | HttpError] = []
        self._busy = False
        self._stream: Stream | None = None
        self._closing = False
        self._draining = False
        self._paused = False
        self._lost: Deferred[None] | None = None
        self._linger: IDelayedCall | None = None
        # The twisted.web request in progress, if one was handed to the site.
        self._handed: Any = None
        # Whether a request head is (or may be) arriving, and the bytes read
        # meanwhile: llhttp reports a header only once it is whole, so an
        # endless header line is caught by counting what arrives.
        self._in_head = True
        self._head_raw = 0
        # Set while ``_next`` runs: an answer given at once continues its loop
        # rather than starting another one inside it.
        self._answering = False

    # IProtocol

    def makeConnection(self, transport: ITransport) -> None:
        self.transport = transport
        self.connectionMade()
        read_now(transport)

    def connectionMade(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self.edge.connections.add(self)
        # A client that connects and sends nothing is held to the deadline too.
        self.edge.deadlines.arm(self, self.edge.request_timeout)

    def dataReceived(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self._closing:
            return  # a stream, or a refused connection: what the client sends is dropped
        if self._in_head:
            self._head_raw += len(data)
        try:
            parser.feed_data(data)
            if self._in_head and self._head_raw > self.edge.max_header_bytes:
                self._refuse_head()
        except httptools.HttpParserCallbackError as error:
            if not isinstance(error.__context__, _Stop):
                log.failure("parsing a request failed", Failure(error.__context__ or error))
                self._refuse(HttpError(500, "internal error"))
        except httptools.HttpParserUpgrade:
            # No protocol upgrades here: the request is answered, nothing after it read.
            self._parser = None
            self._queue_upgrade_refusal()
        except httptools.HttpParserError:
            self._refuse(HttpError(400, "malformed HTTP request"))
        self._next()

    def connectionLost(self, reason: Failure) -> None:
        edge = self.edge
        self._closing = True
        edge.deadlines.disarm(self)
        edge.connections.discard(self)
        self._parser = None
        self._queue.clear()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        if self._stream is not None:
            self._stream.connectionLost(reason)
        if self._handed is not None:
            handed, self._handed = self._handed, None
            handed.connectionLost(reason)
        if self._lost is not None:
            self._lost.callback(None)

    # llhttp's callbacks, in the order it calls them.

    def on_message_begin(self) -> None:
        self._current = ParsedRequest()
        self._head_bytes = 0
        if self not in self.edge.deadlines:
            self.edge.deadlines.arm(self, self.edge.request_timeout)

    def on_url(self, url: bytes) -> None:
        assert self._current is not None
        self._current.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._current is not None
        self._count_head(len(name) + len(value) + 4)
        self._current.raw_headers.append((name, value))
        # The last of a repeated header wins, as in twisted.web's getHeader.
        self._current.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        request = self._current
        parser = self._parser
        assert request is not None and parser is not None
        request.method = parser.get_method()
        request.version = parser.get_http_version()
        request.path, request.query = _split_url(request.url)
        self._in_head = False
        length = request.headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            self._refuse_body(request)
        if request.headers.get(b"expect", b"").lower() == b"100-continue" and request.version == "1.1":
            request.continue_owed = True
            if not self._busy and not self._queue:
                self._send_continue(request)

    def on_body(self, body: bytes) -> None:
        request = self._current
        assert request is not None
        if len(request.body) + len(body) > MAX_BODY:
            self._refuse_body(request)
        request.body += body

    def on_message_complete(self) -> None:
        request = self._current
        parser = self._parser
        assert request is not None and parser is not None
        self._current = None
        self._in_head = True
        self._head_raw = 0
        # Set while ``_next`` runs: an answer given at once continues its loop
        # rather than starting another one inside it.
        self._answering = False
        self.edge.deadlines.disarm(self)
        request.keep_alive = parser.should_keep_alive()
        request.received_at = self.edge.clock.seconds()
        self._queue.append(request)
        if len(self._queue) >= PIPELINE_DEPTH and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def _count_head(self, count: int) -> None:
        self._head_bytes += count
        if self._head_bytes > self.edge.max_header_bytes:
            self._refuse_head()
            raise _Stop()

    def _refuse_head(self) -> None:
        limit = self.edge.max_header_bytes
        self._refuse(HttpError(431, f"request line and headers are larger than {limit} bytes"))

    def _refuse_body(self, request: ParsedRequest) -> None:
        if request.method == b"POST" and request.path == b"/ping":
            self.edge.ping_answered(413, None)
        # The headers are known: a browser's script may read this answer too.
        cors = dict(self._cors(request))
        self._refuse(HttpError(413, f"request body is larger than {MAX_BODY} bytes", cors))
        raise _Stop()

    # Answering, in order.

    def _next(self) -> None:
        """Answer the next complete request, unless an answer is pending."""
        if self._answering:
            return
        self._answering = True
        try:
            while not self._busy and self._queue and self._stream is None and not self._closing:
                item = self._queue.pop(0)
                if isinstance(item, HttpError):
                    self._send_refusal(item)
                    return
                self._busy = True
                self._serve(item)
        finally:
            self._answering = False
        if self._paused and len(self._queue) < PIPELINE_DEPTH // 2 and self.transport is not None:
            self._paused = False
            self.transport.resumeProducing()
        current = self._current
        if not self._busy and not self._queue and current is not None and current.continue_owed:
            self._send_continue(current)

    def _serve(self, request: ParsedRequest) -> None:
        method, path = request.method, request.path
        api = self.edge.api
        try:
            if method == b"POST" and path == b"/ping":
                self._ping(request)
            elif method == b"POST" and path == b"/leave":
                self._leave(request)
            elif method in (b"GET", b"HEAD") and path.startswith(b"/subscribe"):
                if path == b"/subscribe":
                    self._open_stream(request, api.many_users(request))
                    return
                target = subscribe_target(path)
                if target is None:
                    self._hand_over(request)
                else:
                    userid, clientid = target
                    self._open_stream(request, api.one_user(request, userid), clientid)
            else:
                self._hand_over(request)
        except (Refused, HttpError) as error:
            self._answer_error(request, error)
        except Exception:
            self._answer_error(request, internal_error(Failure()))

    def _ping(self, request: ParsedRequest) -> None:
        d = self.edge.api.ping(request, request.body, request.too_large)
        d.addCallbacks(self._pinged, self._failed, (request,), {}, (request,))

    def _pinged(self, _: object, request: ParsedRequest) -> None:
        edge = self.edge
        edge.ping_answered(200, edge.clock.seconds() - request.received_at)
        self._answer_empty(request)

    def _leave(self, request: ParsedRequest) -> None:
        d = self.edge.api.leave(request)
        d.addCallbacks(lambda _: self._answer_empty(request), self._failed, (), {}, (request,))

    def _answer_empty(self, request: ParsedRequest) -> None:
        self._answer(request, responses.whole(
            200, self.edge.second(), self._cors(request), b"", self._connection(request)))

    def _failed(self, failure: Failure, request: ParsedRequest) -> None:
        error = failure.value
        if not isinstance(error, (Refused, HttpError)):
            error = internal_error(failure)
        self._answer_error(request, error)

    def _answer_error(self, request: ParsedRequest, error: Refused | HttpError) -> None:
        http = as_http(error)
        edge = self.edge
        if request.method == b"POST" and request.path == b"/ping":
            edge.ping_answered(http.code, edge.clock.seconds() - request.received_at)
        self._answer(request, responses.error(
            http, edge.second(), self._cors(request), self._connection(request),
            with_body=not request.is_head))

    def _open_stream(self, request: ParsedRequest, reading: Reading,
                     clientid: str | None = None) -> None:
        edge = self.edge
        stream = edge.api.new_stream(reading, request, clientid)
        cors = self._cors(request)
        if request.is_head:  # what a GET would say, and no stream
            headers = [*cors, *STREAM_HEADERS]
            self._answer(request, responses.head(200, edge.second(), headers, self._connection(request)))
            return
        chunked = request.version == "1.1"
        transport = self.transport
        eager_write(transport, responses.stream_head(cors, edge.second(), chunked))
        # From here on the connection is the stream's: nothing more is read
        # or answered, and shutdown closes it through the hub.
        self._stream = stream
        self._parser = None
        self._queue.clear()
        edge.deadlines.disarm(self)
        edge.connections.discard(self)
        stream.take(transport, chunked)
        edge.api.attach(stream, reading)

    def _hand_over(self, request: ParsedRequest) -> None:
        """Let the Klein app answer ``request``; ``handed_done`` is called when it has."""
        self._handed = hand_to_site(self, request, self.edge.site)

    def handed_done(self, request: ParsedRequest, persistent: bool) -> None:
        """The site finished its answer to ``request`` (``persistent``: it can be followed)."""
        self._handed = None
        self._busy = False
        if not persistent:
            request.keep_alive = False
        self._after(request)

    def persists(self, request: ParsedRequest, delimited: bool) -> bool:
        """Whether the connection stays open after the answer to ``request``.

        ``delimited``: the answer's end is known without closing (a length,
        chunks, or no body at all).
        """
        return request.keep_alive and delimited and not self._draining

    def _answer(self, request: ParsedRequest, data: bytes) -> None:
        if self._closing:
            return  # the client went while the answer was pending
        eager_write(self.transport, data)
        self._busy = False
        self._after(request)

    def _after(self, request: ParsedRequest) -> None:
        if not request.keep_alive or self._draining:
            self._closing = True
            self._parser = None
            self.transport.loseConnection()
        else:
            self._next()

    def _connection(self, request: ParsedRequest) -> bytes | None:
        """The ``Connection`` header the answer to ``request`` needs, and what it decides."""
        if self._draining:
            request.keep_alive = False
        if not request.keep_alive:
            return b"close"
        return b"keep-alive" if request.version == "1.0" else None

    def _cors(self, request: ParsedRequest) -> tuple[tuple[bytes, bytes], ...]:
        return self.edge.api.cors.headers(request.headers.get(b"origin"))

    def _send_continue(self, request: ParsedRequest) -> None:
        request.continue_owed = False
        self.transport.write(responses.CONTINUE)

    # Refusals: answered in turn, then the connection is closed.

    def _refuse(self, error: HttpError) -> None:
        """Answer ``error`` after what is already queued, and read nothing more."""
        self._parser = None
        self._current = None
        self.edge.deadlines.disarm(self)
        self._queue.append(error)

    def _send_refusal(self, error: HttpError) -> None:
        self._closing = True
        self._queue.clear()
        transport = self.transport
        transport.write(responses.error(error, self.edge.second(), (), b"close"))
        # Half-close and linger: the client reads the answer, then we hang up.
        half_close = getattr(transport, "loseWriteConnection", None)
        (half_close or transport.loseConnection)()
        self._linger = self.edge.clock.callLater(LINGER, transport.abortConnection)

    def too_slow(self) -> None:
        """The deadline of the request being received passed."""
        if self._parser is None:
            return
        timeout = self.edge.request_timeout
        self._refuse(HttpError(408, f"request not received within {timeout:g} seconds"))
        self._next()

    def _queue_upgrade_refusal(self) -> None:
        self._queue.append(HttpError(400, "protocol upgrades are not supported"))

    # Shutdown.

    def hang_up(self) -> Deferred[None]:
        """Close once the answer in progress is sent; fires when the connection is gone."""
        self._lost = Deferred()
        self._draining = True
        # A request already begun is answered (with ``Connection: close``).
        if not self._busy and self._current is None and not self._queue:
            self._closing = True
            self._parser = None
            self.transport.loseConnection()
        return self._lost

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()


class Edge(Factory):
    """Builds each connection's :class:`HttpConnection`; holds what they share."""

    noisy = False

    def __init__(
        self,
        api: Api,
        site: Site,
        clock: IReactorTime,
        max_header_bytes: int,
        request_timeout: float,
    ) -> None:
        self.api = api
        self.site = site
        self.clock = clock
        self.max_header_bytes = max_header_bytes
        self.request_timeout = request_timeout
        self.connections: set[HttpConnection] = set()
        self.deadlines: Deadlines[HttpConnection] = Deadlines(clock, HttpConnection.too_slow)

    def buildProtocol(self, addr: object) -> HttpConnection:  # type: ignore[override]
        return HttpConnection(self)

    def __conform__(self, interface: object) -> Edge | None:
        """Be an ``IProtocolNegotiationFactory`` when adapted, never by declaration.

        Under ``ssl:``, Twisted 26 adapts the factory to choose what ALPN
        answers; with no protocols it aborts every handshake that offers ALPN
        (curl, browsers, httpx). Twisted 25.5 and older only ask whether the
        factory declares the interface, and would then change the shared TLS
        context at each connection, which pyOpenSSL 25 and later refuse: there,
        not declaring it leaves ALPN unanswered, which clients accept.
        """
        return self if interface is IProtocolNegotiationFactory else None

    def acceptableProtocols(self) -> list[bytes]:
        """What ALPN may choose: HTTP/1.1 only."""
        return [b"http/1.1"]

    def second(self) -> int:
        return int(self.clock.seconds())

    def ping_answered(self, code: int, seconds: float | None) -> None:
        if self.api.meter is not None:
            self.api.meter.ping_answered(code, seconds)

    def drain(self, timeout: float) -> Deferred[object]:
        """Hang up every connection that is not a stream once its answer is sent.

        Fires when all are closed, or after ``timeout`` seconds, when the
        rest (clients that stopped reading) are aborted.
        """
        self.deadlines.stop()
        connections = tuple(self.connections)
        late = self.clock.callLater(timeout, _abort_all, connections)

        def closed(result: object) -> object:
            if late.active():
                late.cancel()
            return result

        return DeferredList([c.hang_up() for c in connections]).addCallback(closed)


def _abort_all(connections: Iterable[HttpConnection]) -> None:
    for connection in connections:
        connection.abort()
