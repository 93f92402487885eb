"""The HTTP API: Klein routes for pinging, subscribing and reading presence.

The ping path is ``ping`` (identity → status → store); the subscribe paths
are ``subscribe`` (one user) and ``subscribe_many`` (a :class:`~heartbeat.sse.Stream`
handed to the hub); ``status`` reads stored pings. CORS wraps them all in
``resource``.
"""

from __future__ import annotations

import json
from typing import Protocol

from klein import Klein
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from heartbeat.core.errors import Refused, TooLarge, Unavailable
from heartbeat.core.expiry import Expiry
from heartbeat.core.hub import Hub
from heartbeat.core.identity import Identity, Reading
from heartbeat.core.ping_body import MAX_BODY, parse_status
from heartbeat.core.presence import Ping
from heartbeat.core.sse import RETRY, STREAM_HEADERS
from heartbeat.core.stream import Stream
from heartbeat.core.users import requested_users
from heartbeat.store.interface import Store
from heartbeat.twisted_internals import eager_write
from heartbeat.web.cors import CorsPolicy, with_cors
from heartbeat.web.errors import HttpError, internal_error, render_error
from heartbeat.web.fastpath import HotRoutes, subscribe_path_user
from heartbeat.web.front import Head, stream_response
from heartbeat.web.health import health


class RouteSettings(Protocol):
    """The settings the routes read (the daemon's ``Settings`` has them)."""

    @property
    def max_users_per_stream(self) -> int: ...
    @property
    def max_streams(self) -> int: ...
    @property
    def stream_blocked_timeout(self) -> float: ...
    @property
    def cors_origins(self) -> tuple[str, ...]: ...


class Meter(Protocol):
    """Where answers are counted and ``/metrics`` is rendered (the daemon's metrics)."""

    def ping_answered(self, code: int, seconds: float | None) -> None: ...
    def render(self, request: IRequest) -> bytes: ...


class HeartbeatApp:
    """Routes; the store, hub, clock, identity and limits come in from outside."""

    app = Klein()
    # werkzeug would redirect /subscribe//x to /subscribe/x: another user's
    # stream for the user id "/x". An empty segment is simply no such path.
    app.url_map.merge_slashes = False

    def __init__(
        self,
        store: Store,
        hub: Hub,
        clock: IReactorTime,
        identity: Identity,
        settings: RouteSettings,
        metrics: Meter | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.clock = clock
        self.identity = identity
        self.settings = settings
        self.metrics = metrics
        self.cors = CorsPolicy(settings.cors_origins)
        self.expiry = Expiry(clock)

    def resource(self):  # type: ignore[no-untyped-def]
        routes = HotRoutes(self.app.resource(), self.ping, self.subscribe)
        return with_cors(routes, self.cors)

    @app.route("/ping", methods=["POST"])
    def ping(self, request: IRequest) -> Deferred[bytes]:
        userid = self.identity.ping_user(request)
        if request.body_too_large:
            raise TooLarge(f"request body is larger than {MAX_BODY} bytes")
        status = parse_status(
            request.getHeader(b"Content-Type"), request.content.getvalue()
        )
        ping = Ping(userid, int(self.clock.seconds()), status)
        request.setHeader(b"Content-Length", b"0")
        return self.store.ping(ping).addCallback(lambda _: b"")

    @app.route("/subscribe/<userid>", methods=["GET"])
    @app.route("/subscribe/<userid>/client/<clientid>", methods=["GET"])
    def subscribe(
        self, request: IRequest, userid: str, clientid: str | None = None
    ) -> Deferred[bytes]:
        return self.open_stream(request, self._one_user(request, userid))

    @app.route("/subscribe", methods=["GET"])
    def subscribe_many(self, request: IRequest) -> Deferred[bytes]:
        return self.open_stream(request, self._many_users(request))

    def _one_user(self, request: IRequest | Head, userid: str) -> Reading:
        return self.identity.authorize_read(request, (userid,))

    def _many_users(self, request: IRequest | Head) -> Reading:
        """The ``?user=`` list of the multi-user routes, if the caller may read them."""
        userids = requested_users(request, self.settings.max_users_per_stream)
        return self.identity.authorize_read(request, userids)

    def open_stream(self, request: IRequest, reading: Reading) -> Deferred[bytes]:
        """Start an event stream of ``reading``: every streaming route ends here.

        The open-stream limit is checked before any header is sent, so a
        refused client gets a plain 503 rather than a stream that ends.
        """
        if self._streams_full():
            raise Unavailable(
                f"too many open streams (limit {self.settings.max_streams}), retry later", 5
            )
        if request.method == b"HEAD":  # what a GET would say, and no stream
            set_stream_headers(request)
            return succeed(b"")
        stream = self._stream(reading.userids, request)
        set_stream_headers(request)
        request.write(RETRY)
        stream.take(request.channel.hand_over(), bool(request.chunked))
        self._attach(stream, reading)
        return succeed(b"")

    def open_stream_now(self, head: Head, transport: ITransport) -> bool:
        """Open the stream ``head`` asks for on ``transport``, past twisted.web.

        The usual first request of a connection (:mod:`heartbeat.web.front`).
        Refuses nothing itself: what the routes would refuse, or a stream
        over the limit, is left to them (False), and they answer it.
        """
        reading = self._head_users(head)
        if reading is None or self._streams_full():
            return False
        stream = self._stream(reading.userids, head)
        origin = head.getHeader(b"Origin")
        response = stream_response(self.cors.headers(origin), int(self.clock.seconds()))
        eager_write(transport, response)
        stream.take(transport)
        self._attach(stream, reading)
        return True

    def _attach(self, stream: Stream, reading: Reading) -> None:
        """Hand an open stream to the hub, to end when its token expires."""
        self.hub.attach(stream)
        if reading.expires is not None:
            self.expiry.add(stream, reading.expires)

    def _head_users(self, head: Head) -> Reading | None:
        """Whom ``head`` asks to watch, if the routes would open its stream."""
        try:
            if head.path == b"/subscribe":
                return self._many_users(head)
            userid = subscribe_path_user(head.path)
            return None if userid is None else self._one_user(head, userid)
        except (HttpError, Refused):
            return None

    def _streams_full(self) -> bool:
        return len(self.hub.streams) >= self.settings.max_streams

    def _stream(self, userids: tuple[str, ...], request: IRequest | Head) -> Stream:
        return Stream(
            userids, self.clock, self.settings.stream_blocked_timeout,
            request.getHeader(b"Last-Event-ID"),
        )

    @app.route("/status", methods=["GET"])
    def status(self, request: IRequest) -> Deferred[bytes]:
        userids = self._many_users(request).userids
        return self.store.get(userids).addCallback(_status_body, request)

    @app.route("/health", methods=["GET"])
    def get_health(self, request: IRequest) -> bytes:
        return health(request, self.store, self.hub)

    @app.route("/metrics", methods=["GET"])
    def get_metrics(self, request: IRequest) -> bytes:
        if self.metrics is None:
            raise HttpError(404, "no metrics here")
        return self.metrics.render(request)

    @app.handle_errors(HttpError, Refused)
    def api_error(self, request: IRequest, failure: Failure) -> bytes:
        return render_error(request, failure.value)

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return render_error(request, HttpError(404, "no such path"))

    @app.handle_errors(MethodNotAllowed)
    def wrong_method(self, request: IRequest, failure: Failure) -> bytes:
        allowed = ", ".join(failure.value.valid_methods or ())
        return render_error(
            request,
            HttpError(405, "method not allowed", {b"Allow": allowed.encode()}),
        )

    @app.handle_errors(HTTPException)
    def other_http_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        return render_error(request, HttpError(error.code or 400, error.name.lower()))

    @app.handle_errors(Exception)
    def bug(self, request: IRequest, failure: Failure) -> bytes:
        return render_error(request, internal_error(failure))


def set_stream_headers(request: IRequest) -> None:
    for name, value in STREAM_HEADERS:
        request.setHeader(name, value)


def _status_body(pings: dict[str, Ping | None], request: IRequest) -> bytes:
    """``{"a": {"time": …, "status": …}, "b": null}`` in the order asked."""
    body = json.dumps(
        {userid: ping.as_status() if ping is not None else None
         for userid, ping in pings.items()},
        separators=(",", ":"),
    ).encode("utf-8")
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-cache")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body
