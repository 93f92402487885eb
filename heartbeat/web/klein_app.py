"""The Klein app: the table's ``KLEIN`` routes, behind the edge.

The edge (:mod:`heartbeat.web.edge`) hands these routes here, and CORS
preflights (:mod:`heartbeat.web.cors` wraps the app in ``resource``); the
errors of every Klein route are JSON, as the edge's are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from heartbeat.core.errors import Refused
from heartbeat.web.api import Api
from heartbeat.web.cors import with_cors
from heartbeat.web.errors import HttpError, internal_error, render_error
from heartbeat.web.routes import ROUTES
from heartbeat.web.table import Route


def _endpoint(route: Route) -> Callable[..., Any]:
    handler = route.handler

    def serve(app: HeartbeatApp, request: IRequest, **params: str) -> Any:
        return handler(app.api, request, **params)

    return serve


class HeartbeatApp:
    """The Klein routes over one :class:`Api`."""

    app = Klein()
    # werkzeug would redirect /subscribe//x to /subscribe/x: another user's
    # stream for the user id "/x". An empty segment is simply no such path.
    app.url_map.merge_slashes = False
    for _route in ROUTES.cold():
        app.route(_route.path, methods=list(_route.methods), endpoint=_route.name)(_endpoint(_route))
    del _route

    def __init__(self, api: Api) -> None:
        self.api = api

    def resource(self) -> IResource:
        return with_cors(self.app.resource(), self.api.cors)

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
