"""The HTTP edge: one protocol object for the whole life of each connection.

Every byte a client sends is parsed once, by llhttp (``httptools``), in
:class:`HttpConnection`. Each request finds its route in
the route table (:mod:`heartbeat.web.routes`): the hot ones, nearly all the
traffic (``POST /ping``, the streams), are answered here from that parse,
with no twisted.web objects at all; when a stream starts, the same object
stays the connection's protocol and the stream becomes its producer. The
``KLEIN`` routes and CORS preflights are handed to the Klein app as a
twisted.web ``Request`` whose channel is a small adapter over this
connection (:mod:`heartbeat.web.handoff`). Unknown paths (``404``) and
methods a path does not declare (``405``, ``Allow`` from the table) are
answered here.

Each request's state, from its first byte to its answer, is a
:class:`Cycle`; the connection keeps only what spans requests: its parser,
the queue of requests waiting for their answer, what it is doing (``state``)
and its flow control. The connection's protocol never changes, so TLS
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
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site
from zope.interface import implementer

from heartbeat.core.deadlines import Deadlines
from heartbeat.core.errors import Refused
from heartbeat.core.identity import Reading
from heartbeat.core.ping_body import MAX_BODY
from heartbeat.core.sse import Frame
from heartbeat.core.stream import Stream
from heartbeat.twisted_internals import eager_write, read_now
from heartbeat.web import responses
from heartbeat.web.api import Api
from heartbeat.web.errors import HttpError, as_http, internal_error
from heartbeat.web.handoff import check_target, hand_to_site
from heartbeat.web.request import ParsedRequest
from heartbeat.web.table import CALL, NO_PARAMS, STREAM, Resource, Route, RouteTable, decode_params

log = Logger()

# How long a refused client may keep sending before it is cut off: closing
# with unread input would reset the connection and could destroy the answer.
LINGER = 2.0
# Complete requests queued behind a pending answer before reading pauses.
PIPELINE_DEPTH = 16

# What a connection is doing (``HttpConnection.state``), apart from reading.
IDLE = 0        # no answer pending: the next complete request is answered at once
ANSWERING = 1   # an answer is pending (the store, or the Klein app)
STREAMING = 2   # the connection is an event stream's: nothing more is read or answered
CLOSING = 3     # the last answer is written, or the client went: nothing more is answered


class Cycle:
    """One request, from its first byte to its answer: what the edge knows of it."""

    __slots__ = (
        "request", "resource", "params", "route", "head_bytes", "in_head",
        "received_at", "continue_owed", "handed",
    )

    def __init__(self) -> None:
        self.request = ParsedRequest()
        # The path's routes (None: no such path), its raw parameters, and the
        # method's route (None: the method is not declared), once the head is in.
        self.resource: Resource | None = None
        self.params = NO_PARAMS
        self.route: Route | None = None
        # Head bytes llhttp reported, and whether the head is still arriving.
        self.head_bytes = 0
        self.in_head = True
        self.received_at = 0.0
        self.continue_owed = False
        # The twisted.web request answering it, once handed to the Klein app.
        self.handed: Any = None


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
        "edge", "transport", "state", "_parser", "_receiving", "_head_raw", "_upgraded",
        "_queue", "_answering", "_stream", "_chunked", "_draining", "_paused", "_lost", "_linger",
        "_in_next",
    )

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.transport: Any = None
        self.state = IDLE
        # None once nothing more is read (a stream, a refusal, closing).
        self._parser: httptools.HttpRequestParser | None = None
        # The request being received, and the bytes read since the last one
        # ended: llhttp reports a header only once it is whole, so an endless
        # header line is caught by counting what arrives.
        self._receiving: Cycle | None = None
        self._head_raw = 0
        # A request that asked to ``Upgrade`` and has a body: llhttp skips
        # that body, so a second parser reads it (see ``_feed``).
        self._upgraded: Cycle | None = None
        # Requests received, waiting for their answer, and refusals to send.
        # A list, not a deque: it is nearly always empty, and an empty deque
        # costs a whole block of memory on every open stream.
        self._queue: list[Cycle | HttpError] = []
        # The request whose answer is pending (state ANSWERING).
        self._answering: Cycle | None = None
        self._stream: Stream | None = None
        # The stream's body is HTTP/1.1 chunks (not an HTTP/1.0 body ended by closing).
        self._chunked = False
        # Shutdown asked: close after the answer in progress.
        self._draining = False
        # Reading paused: too many requests queued.
        self._paused = False
        self._lost: Deferred[None] | None = None
        self._linger: IDelayedCall | None = None
        # Set while ``_next`` runs: an answer given at once continues its loop
        # rather than starting another one inside it.
        self._in_next = False

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
        if parser is None or self.state >= STREAMING:
            return  # a stream, or a refused connection: what the client sends is dropped
        receiving = self._receiving
        if receiving is None or receiving.in_head:
            self._head_raw += len(data)
        try:
            self._feed(parser, data)
            receiving = self._receiving
            if (receiving is None or receiving.in_head) and self._head_raw > self.edge.max_header_bytes:
                self._refuse_head()
        except httptools.HttpParserCallbackError as error:
            if not isinstance(error.__context__, _Stop):
                log.failure("parsing a request failed", Failure(error.__context__ or error))
                self._refuse(HttpError(500, "internal error"))
        except httptools.HttpParserError:
            self._refuse(HttpError(400, "malformed HTTP request"))
        self._next()

    def _feed(self, parser: httptools.HttpRequestParser, data: bytes) -> None:
        """Parse ``data``, ignoring any ``Upgrade`` (SPEC §5).

        llhttp stops at the end of an upgrading request's head, its body
        unread; parsing goes on with a new parser, which first reads a head
        made up to frame that body the way the request said (its length or
        chunks), into the request held in ``_upgraded``.
        """
        while True:
            try:
                parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                data = data[upgrade.args[0]:]
                parser = self._parser = httptools.HttpRequestParser(self)
                held = self._upgraded
                if held is not None:
                    headers = held.request.headers
                    framing = (b"Transfer-Encoding: chunked" if b"transfer-encoding" in headers
                               else b"Content-Length: " + headers[b"content-length"])
                    parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n")

    def connectionLost(self, reason: Failure) -> None:
        edge = self.edge
        self.state = CLOSING
        edge.deadlines.disarm(self)
        edge.connections.discard(self)
        self._parser = None
        self._queue.clear()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        if self._stream is not None:
            self._stream.connectionLost(reason)
        answering, self._answering = self._answering, None
        if answering is not None and answering.handed is not None:
            answering.handed.connectionLost(reason)
        if self._lost is not None:
            self._lost.callback(None)

    # llhttp's callbacks, in the order it calls them.

    def on_message_begin(self) -> None:
        if self._upgraded is not None:  # the made-up head of an upgrading request's body
            return
        self._receiving = Cycle()
        if self not in self.edge.deadlines:
            self.edge.deadlines.arm(self, self.edge.request_timeout)

    def on_url(self, url: bytes) -> None:
        cycle = self._receiving
        if self._upgraded is not None or cycle is None:
            return
        cycle.request.url += url
        self._count_head(cycle, len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        cycle = self._receiving
        if self._upgraded is not None or cycle is None:
            return
        self._count_head(cycle, len(name) + len(value) + 4)
        request = cycle.request
        request.raw_headers.append((name, value))
        # The last of a repeated header wins, as in twisted.web's getHeader.
        request.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        if self._upgraded is not None:
            return
        cycle = self._receiving
        parser = self._parser
        assert cycle is not None and parser is not None
        cycle.in_head = False
        request = cycle.request
        request.keep_alive = parser.should_keep_alive()
        request.method = parser.get_method()
        request.version = parser.get_http_version()
        request.path, request.query = _split_url(request.url)
        found = self.edge.routes.find(request.path)
        if found is not None:
            cycle.resource, cycle.params = found
            cycle.route = cycle.resource.by_method.get(request.method)
        length = request.headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > _max_body(cycle):
            self._refuse_body(cycle)
        if request.headers.get(b"expect", b"").lower() == b"100-continue" and request.version == "1.1":
            cycle.continue_owed = True
            if self.state == IDLE and not self._queue:
                self._send_continue(cycle)

    def on_body(self, body: bytes) -> None:
        cycle = self._receiving
        assert cycle is not None
        request = cycle.request
        if len(request.body) + len(body) > _max_body(cycle):
            self._refuse_body(cycle)
        request.body += body

    def on_message_complete(self) -> None:
        cycle = self._receiving
        parser = self._parser
        assert cycle is not None and parser is not None
        if self._upgraded is None and parser.should_upgrade() and cycle.request.has_body:
            self._upgraded = cycle  # its body comes next, through another parser
            return
        self._upgraded = None
        self._receiving = None
        self._head_raw = 0
        self.edge.deadlines.disarm(self)
        cycle.received_at = self.edge.clock.seconds()
        self._queue.append(cycle)
        if len(self._queue) >= PIPELINE_DEPTH and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def _count_head(self, cycle: Cycle, count: int) -> None:
        cycle.head_bytes += count
        if cycle.head_bytes > self.edge.max_header_bytes:
            self._refuse_head()
            raise _Stop()

    def _refuse_head(self) -> None:
        limit = self.edge.max_header_bytes
        self._refuse(HttpError(431, f"request line and headers are larger than {limit} bytes"))

    def _refuse_body(self, cycle: Cycle) -> None:
        if cycle.route is not None and cycle.route.ping:
            self.edge.ping_answered(413, None)
        # The headers are known: a browser's script may read this answer too.
        cors = dict(self._cors(cycle.request))
        limit = _max_body(cycle)
        self._refuse(HttpError(413, f"request body is larger than {limit} bytes", cors))
        raise _Stop()

    # Answering, in order.

    def _next(self) -> None:
        """Answer the next complete request, unless an answer is pending."""
        if self._in_next:
            return
        self._in_next = True
        try:
            while self.state == IDLE and self._queue:
                item = self._queue.pop(0)
                if isinstance(item, HttpError):
                    self._send_refusal(item)
                    return
                self.state = ANSWERING
                self._answering = item
                self._serve(item)
        finally:
            self._in_next = False
        if self._paused and len(self._queue) < PIPELINE_DEPTH // 2 and self.transport is not None:
            self._paused = False
            self.transport.resumeProducing()
        receiving = self._receiving
        if self.state == IDLE and not self._queue and receiving is not None and receiving.continue_owed:
            self._send_continue(receiving)

    def _serve(self, cycle: Cycle) -> None:
        """Answer ``cycle`` as its route says."""
        route = cycle.route
        request = cycle.request
        api = self.edge.api
        try:
            if route is None:
                self._unrouted(cycle)
            elif route.serve is CALL:
                d = route.handler(api, request, request.body, **decode_params(cycle.params))
                d.addCallbacks(self._called, self._failed, (cycle,), None, (cycle,))
            elif route.serve is STREAM:
                reading, clientid = route.handler(api, request, request.body, **decode_params(cycle.params))
                self._open_stream(cycle, reading, clientid)
            else:
                self._hand_over(cycle)
        except (Refused, HttpError) as error:
            self._answer_error(cycle, error)
        except Exception:
            self._answer_error(cycle, internal_error(Failure()))

    def _unrouted(self, cycle: Cycle) -> None:
        """No route for this method and path: a CORS preflight, a ``404`` or a ``405``."""
        request = cycle.request
        if (request.method == b"OPTIONS" and self.edge.api.cors.enabled
                and b"origin" in request.headers and b"access-control-request-method" in request.headers):
            self._hand_over(cycle)
            return
        check_target(request)
        if cycle.resource is None:
            raise HttpError(404, "no such path")
        raise HttpError(405, "method not allowed", {b"Allow": cycle.resource.allow})

    def _called(self, _: object, cycle: Cycle) -> None:
        edge = self.edge
        request = cycle.request
        headers = self._cors(request)
        route = cycle.route
        if route is not None and route.ping:
            edge.ping_answered(200, edge.clock.seconds() - cycle.received_at)
            headers += edge.api.pacing
        self._answer(cycle, responses.whole(200, edge.second(), headers, b"", self._connection(request)))

    def _failed(self, failure: Failure, cycle: Cycle) -> None:
        error = failure.value
        if not isinstance(error, (Refused, HttpError)):
            error = internal_error(failure)
        self._answer_error(cycle, error)

    def _answer_error(self, cycle: Cycle, error: Refused | HttpError) -> None:
        http = as_http(error)
        edge = self.edge
        request = cycle.request
        if cycle.route is not None and cycle.route.ping:
            edge.ping_answered(http.code, edge.clock.seconds() - cycle.received_at)
        self._answer(cycle, responses.error(
            http, edge.second(), self._cors(request), self._connection(request),
            with_body=not request.is_head))

    def _open_stream(self, cycle: Cycle, reading: Reading, clientid: str | None) -> None:
        edge = self.edge
        request = cycle.request
        stream = edge.api.new_stream(reading, request, clientid)
        headers = self._cors(request) + edge.api.pacing
        if request.is_head:  # what a GET would say, and no stream
            self._answer(cycle, responses.head(
                200, edge.second(), (*headers, *responses.STREAM_HEADERS), self._connection(request)))
            return
        chunked = request.version == "1.1"
        transport = self.transport
        eager_write(transport, responses.stream_head(headers, edge.second(), chunked))
        # From here on the connection is the stream's: nothing more is read
        # or answered, and shutdown closes it through the hub.
        self.state = STREAMING
        self._answering = None
        self._stream = stream
        self._chunked = chunked
        self._parser = None
        self._receiving = None
        self._queue.clear()
        edge.deadlines.disarm(self)
        edge.connections.discard(self)
        stream.take(self)
        edge.api.attach(stream, reading)

    # The stream's transport (core's ``StreamTransport``): its frames in this
    # connection's HTTP framing.

    def send(self, frame: Frame) -> None:
        if self._chunked:
            wire = frame.wire
            if wire is None:
                wire = frame.wire = responses.chunk(frame.data)
            eager_write(self.transport, wire)
        else:
            eager_write(self.transport, frame.data)

    def end(self) -> None:
        if self._chunked:
            eager_write(self.transport, responses.LAST_CHUNK)
        self.transport.loseConnection()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def abortConnection(self) -> None:
        self.transport.abortConnection()

    def _hand_over(self, cycle: Cycle) -> None:
        """Let the Klein app answer ``cycle``; ``handed_done`` is called when it has."""
        cycle.handed = hand_to_site(self, cycle.request, self.edge.site)

    def handed_done(self, request: ParsedRequest, persistent: bool) -> None:
        """The site finished its answer to ``request`` (``persistent``: it can be followed)."""
        self._answering = None
        if self.state == ANSWERING:
            self.state = IDLE
        if not persistent:
            request.keep_alive = False
        self._after(request)

    def persists(self, request: ParsedRequest, delimited: bool) -> bool:
        """Whether the connection stays open after the answer to ``request``.

        ``delimited``: the answer's end is known without closing (a length,
        chunks, or no body at all).
        """
        return request.keep_alive and delimited and not self._draining

    def _answer(self, cycle: Cycle, data: bytes) -> None:
        if self.state != ANSWERING:
            return  # the client went while the answer was pending
        eager_write(self.transport, data)
        self.state = IDLE
        self._answering = None
        self._after(cycle.request)

    def _after(self, request: ParsedRequest) -> None:
        if not request.keep_alive or self._draining:
            self.state = CLOSING
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

    def _send_continue(self, cycle: Cycle) -> None:
        cycle.continue_owed = False
        self.transport.write(responses.CONTINUE)

    # Refusals: answered in turn, then the connection is closed.

    def _refuse(self, error: HttpError) -> None:
        """Answer ``error`` after what is already queued, and read nothing more."""
        self._parser = None
        self._receiving = None
        self.edge.deadlines.disarm(self)
        self._queue.append(error)

    def _send_refusal(self, error: HttpError) -> None:
        self.state = CLOSING
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

    # Shutdown.

    def hang_up(self) -> Deferred[None]:
        """Close once the answer in progress is sent; fires when the connection is gone."""
        self._lost = Deferred()
        self._draining = True
        # A request already begun is answered (with ``Connection: close``).
        if self.state == IDLE and self._receiving is None and not self._queue:
            self.state = CLOSING
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
        routes: RouteTable,
        clock: IReactorTime,
        max_header_bytes: int,
        request_timeout: float,
    ) -> None:
        self.api = api
        self.site = site
        self.routes = routes
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
        """What ALPN may choose: HTTP/1.1, or HTTP/1.0 for a client that offers only
        that (``curl --http1.0``); with nothing in common the handshake is aborted."""
        return [b"http/1.1", b"http/1.0"]

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


def _max_body(cycle: Cycle) -> int:
    """The body its route reads (a ping's for a request with no route: it is refused anyway)."""
    return MAX_BODY if cycle.route is None else cycle.route.max_body


def _abort_all(connections: Iterable[HttpConnection]) -> None:
    for connection in connections:
        connection.abort()
