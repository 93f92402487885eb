"""The route table: every route of the API, once, with its methods and its handler.

The edge (:mod:`heartbeat.web.edge`) finds every request's route here: it
serves the hot ones (``CALL``, ``STREAM``) from its own parse and hands the
``KLEIN`` ones to the Klein app (:mod:`heartbeat.web.klein_app`), which is
built from this table too. A method a path does not declare is a ``405``
with ``Allow`` from here, an unknown path a ``404``.

Adding a route is one entry in :data:`ROUTES` and its handler (see
:mod:`heartbeat.web.table` for each kind's signature): a Klein route's
handler below, a hot route's a method of :class:`~heartbeat.web.api.Api`.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from heartbeat.web.api import Api
from heartbeat.web.errors import HttpError
from heartbeat.web.health import health
from heartbeat.web.table import CALL, KLEIN, STREAM, Route, RouteTable


def get_status(api: Api, request: IRequest) -> Deferred[bytes]:
    return api.status(request).addCallback(json_body, request)


def get_health(api: Api, request: IRequest) -> bytes:
    return health(request, api.store, api.hub)


def get_metrics(api: Api, request: IRequest) -> bytes:
    if api.meter is None:
        raise HttpError(404, "no metrics here")
    return api.meter.render(request)


def json_body(body: bytes, request: IRequest) -> bytes:
    """``body`` as a JSON answer that no cache keeps."""
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-cache")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


ROUTES = RouteTable([
    Route("/ping", ("POST",), Api.ping, CALL, ping=True),
    Route("/leave", ("POST",), Api.leave, CALL),
    Route("/subscribe", ("GET",), Api.subscribe_many, STREAM),
    Route("/subscribe/<userid>", ("GET",), Api.subscribe_one, STREAM),
    Route("/subscribe/<userid>/client/<clientid>", ("GET",), Api.subscribe_one, STREAM),
    Route("/status", ("GET",), get_status, KLEIN),
    Route("/health", ("GET",), get_health, KLEIN),
    Route("/metrics", ("GET",), get_metrics, KLEIN),
])
