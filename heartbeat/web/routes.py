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
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from heartbeat.core.errors import Refused
from heartbeat.core.identity import Reading
from heartbeat.core.ping_body import MAX_BODY
from heartbeat.core.sse import RETRY, STREAM_HEADERS
from heartbeat.web.api import Api
from heartbeat.web.backend import MAX_BULK_BODY, Backend
from heartbeat.web.cors import with_cors
from heartbeat.web.errors import HttpError, internal_error, render_error
from heartbeat.web.health import health, liveness, readiness


class HeartbeatApp:
    """Routes over one :class:`Api`."""

    app = Klein()
    # werkzeug would redirect /subscribe//x to /subscribe/x: another user's
    # stream for the user id "/x". An empty segment is simply no such path.
    app.url_map.merge_slashes = False

    def __init__(self, api: Api) -> None:
        self.api = api
        self.backend = Backend(api, api.settings.api_key)

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
        return self.api.status(request).addCallback(_json_body, request)

    @app.route("/status", methods=["POST"])
    def bulk_status(self, request: IRequest) -> Deferred[bytes]:
        body = request.content.read(MAX_BULK_BODY + 1)
        d = self.backend.status(request, body, too_large=len(body) > MAX_BULK_BODY)
        return d.addCallback(_json_body, request)

    @app.route("/online", methods=["GET"])
    def online(self, request: IRequest) -> Deferred[bytes]:
        return self.backend.online(request).addCallback(_json_body, request)

    @app.route("/users/<path:userid>", methods=["DELETE"])
    def erase(self, request: IRequest, userid: str) -> Deferred[bytes]:
        return self.backend.erase(request, userid).addCallback(_no_content, request)

    @app.route("/users/<path:userid>/disconnect", methods=["POST"])
    def disconnect(self, request: IRequest, userid: str) -> Deferred[bytes]:
        return self.backend.disconnect(request, userid).addCallback(_no_content, request)

    @app.route("/livez", methods=["GET"])
    def livez(self, request: IRequest) -> bytes:
        return liveness(request)

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: IRequest) -> bytes:
        return readiness(request, self.api.store, self.api.stopping)

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


def _json_body(body: bytes, request: IRequest) -> bytes:
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-cache")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def _no_content(_: object, request: IRequest) -> bytes:
    request.setResponseCode(204)
    return b""


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
