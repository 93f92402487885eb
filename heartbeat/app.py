"""The HTTP API: Klein routes for pinging and subscribing.

The ping path is ``ping`` (identity → status → store); the subscribe path is
``subscribe`` (a :class:`~heartbeat.sse.Stream` handed to the hub).
"""

from __future__ import annotations

from collections.abc import Callable

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from heartbeat.errors import ApiError, render_error
from heartbeat.hub import Hub
from heartbeat.presence import Ping
from heartbeat.sse import Stream
from heartbeat.status import MAX_BODY, parse_status
from heartbeat.store import Store

Identify = Callable[[IRequest], str]


class HeartbeatApp:
    """Routes; the store, hub, clock and identity check come in from outside."""

    app = Klein()

    def __init__(
        self, store: Store, hub: Hub, clock: IReactorTime, identify: Identify
    ) -> None:
        self.store = store
        self.hub = hub
        self.clock = clock
        self.identify = identify

    def resource(self):  # type: ignore[no-untyped-def]
        return self.app.resource()

    @app.route("/ping", methods=["POST"])
    def ping(self, request: IRequest) -> Deferred[bytes]:
        userid = self.identify(request)
        if request.body_too_large:
            raise ApiError(413, f"request body is larger than {MAX_BODY} bytes")
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
        stream = Stream(request, (userid,))
        stream.start()
        self.hub.attach(stream)
        return stream.finished

    @app.handle_errors(ApiError)
    def api_error(self, request: IRequest, failure: Failure) -> bytes:
        return render_error(request, failure.value)

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return render_error(request, ApiError(404, "no such path"))

    @app.handle_errors(MethodNotAllowed)
    def wrong_method(self, request: IRequest, failure: Failure) -> bytes:
        allowed = ", ".join(failure.value.valid_methods or ())
        return render_error(
            request,
            ApiError(405, "method not allowed", {b"Allow": allowed.encode()}),
        )
