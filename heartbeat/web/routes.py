"""The Klein app: every route, for any twisted.web site, and the edge's fallback.

The daemon's edge (:mod:`heartbeat.web.edge`) answers ``POST /ping`` and the
streams itself and hands everything else here; served by a plain
twisted.web ``Site`` (or treq's ``StubTreq`` in tests) this app answers
every route on its own, through the same :class:`~heartbeat.web.api.Api`
handlers. CORS wraps them all in ``resource``.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from heartbeat.core.changes import ChangeFeed, Page, Position, PositionGone
from heartbeat.core.errors import Refused
from heartbeat.core.identity import Reading
from heartbeat.core.ping_body import MAX_BODY
from heartbeat.core.sse import RETRY, STREAM_HEADERS
from heartbeat.web.api import SUBSCRIBE_BODY, Api
from heartbeat.web.cors import with_cors
from heartbeat.web.errors import HttpError, internal_error, render_error
from heartbeat.web.feed_route import DEFAULT_LIMIT, ChangesRoute, wants_stream
from heartbeat.web.health import health


class HeartbeatApp:
    """Routes over one :class:`Api`."""

    app = Klein()
    # werkzeug would redirect /subscribe//x to /subscribe/x: another user's
    # stream for the user id "/x". An empty segment is simply no such path.
    app.url_map.merge_slashes = False

    def __init__(self, api: Api) -> None:
        self.api = api
        self.changes_route = ChangesRoute(api.feed, api.settings.api_key, api.clock,
                                          api.feed_streams)

    def resource(self) -> IResource:
        return with_cors(self.app.resource(), self.api.cors)

    @app.route("/ping", methods=["POST"])
    def ping(self, request: IRequest) -> Deferred[bytes]:
        body = request.content.read(MAX_BODY + 1)
        d = self.api.ping(request, body[:MAX_BODY], too_large=len(body) > MAX_BODY)
        request.setHeader(b"Content-Length", b"0")
        return d.addCallback(lambda _: b"")

    @app.route("/leave", methods=["POST"])
    def leave(self, request: IRequest) -> Deferred[bytes]:
        request.setHeader(b"Content-Length", b"0")
        return self.api.leave(request).addCallback(lambda _: b"")

    @app.route("/subscribe/<userid>", methods=["GET"])
    @app.route("/subscribe/<userid>/client/<clientid>", methods=["GET"])
    def subscribe(
        self, request: IRequest, userid: str, clientid: str | None = None
    ) -> Deferred[bytes]:
        return self._stream(request, self.api.one_user(request, userid), clientid)

    @app.route("/subscribe", methods=["GET"])
    def subscribe_many(self, request: IRequest) -> Deferred[bytes]:
        return self._stream(request, self.api.many_users(request))

    @app.route("/subscribe", methods=["POST"])
    def subscribe_posted(self, request: IRequest) -> Deferred[bytes]:
        body = request.content.read(SUBSCRIBE_BODY + 1)
        reading = self.api.posted_users(request, body, too_large=len(body) > SUBSCRIBE_BODY)
        return self._stream(request, reading)

    def _stream(self, request: Any, reading: Reading,
                clientid: str | None = None) -> Deferred[bytes]:
        stream = self.api.new_stream(reading, request, clientid)
        set_stream_headers(request)
        if request.method == b"HEAD":  # what a GET would say, and no stream
            return succeed(b"")
        request.write(RETRY)
        # twisted.web frames the body (chunks, or none for HTTP/1.0): the
        # stream writes bare frames.
        stream.take(RequestTransport(request), chunked=False)
        request.notifyFinish().addBoth(stream.connectionLost)
        self.api.attach(stream, reading)
        return Deferred()

    @app.route("/status", methods=["GET"])
    def status(self, request: IRequest) -> Deferred[bytes]:
        return self.api.status(request).addCallback(_status_answer, request)

    @app.route("/changes", methods=["GET"])
    def changes(self, request: IRequest) -> Deferred[bytes]:
        route = self.changes_route
        if not wants_stream(request):
            return route.page(request).addCallback(_json_body, request)
        feed, after = route.start_stream(request)
        # Read before any header is sent: a position not kept is a plain 410.
        return feed.changes(after, DEFAULT_LIMIT).addCallback(
            self._feed_stream, request, feed)

    def _feed_stream(self, page: Page, request: Any, feed: ChangeFeed) -> Deferred[bytes]:
        set_stream_headers(request)
        if request.method == b"HEAD":
            return succeed(b"")
        route = self.changes_route
        ended: list[object] = []

        def end() -> None:
            if not ended:
                request.finish()

        route.streams.add(end)
        request.notifyFinish().addBoth(ended.append).addBoth(
            lambda _: route.streams.discard(end))
        done = ensureDeferred(route.stream(feed, page, request.write, request.notifyFinish()))
        # Past retention mid-stream (a reader far behind): the stream ends, and
        # its reconnect with Last-Event-ID gets the 410.
        done.addErrback(lambda f: None if f.check(PositionGone, CancelledError)
                        else internal_error(f))
        done.addCallback(lambda _: end())
        return Deferred()

    @app.route("/health", methods=["GET"])
    def get_health(self, request: IRequest) -> bytes:
        return health(request, self.api.store, self.api.hub)

    @app.route("/metrics", methods=["GET"])
    def get_metrics(self, request: IRequest) -> bytes:
        if self.api.meter is None:
            raise HttpError(404, "no metrics here")
        return self.api.meter.render(request)

    @app.handle_errors(HttpError, Refused)
    def api_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, (HttpError, Refused))
        return render_error(request, error)

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return render_error(request, HttpError(404, "no such path"))

    @app.handle_errors(MethodNotAllowed)
    def wrong_method(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, MethodNotAllowed)
        allowed = ", ".join(error.valid_methods or ())
        return render_error(
            request,
            HttpError(405, "method not allowed", {b"Allow": allowed.encode()}),
        )

    @app.handle_errors(HTTPException)
    def other_http_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPException)
        return render_error(request, HttpError(error.code or 400, error.name.lower()))

    @app.handle_errors(Exception)
    def bug(self, request: IRequest, failure: Failure) -> bytes:
        return render_error(request, internal_error(failure))


def _status_answer(answer: tuple[bytes, Position | None], request: IRequest) -> bytes:
    body, cursor = answer
    if cursor is not None:
        request.setHeader(b"Heartbeat-Cursor", str(cursor).encode("ascii"))
    return _json_body(body, request)


def _json_body(body: bytes, request: IRequest) -> bytes:
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-cache")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def set_stream_headers(request: IRequest) -> None:
    for name, value in STREAM_HEADERS:
        request.setHeader(name, value)


class RequestTransport:
    """A twisted.web request as the transport of a stream served through Klein."""

    def __init__(self, request: Any) -> None:
        self._request = request

    def write(self, data: bytes) -> None:
        self._request.write(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._request.unregisterProducer()

    def loseConnection(self) -> None:
        if not self._request.finished:
            self._request.finish()

    def abortConnection(self) -> None:
        self._request.loseConnection()
