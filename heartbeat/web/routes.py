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

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.web.iweb import IRequest

from heartbeat.core.changes import ChangeFeed, Page, Position, PositionGone
from heartbeat.web import backend
from heartbeat.web.api import SUBSCRIBE_BODY, Api, json_body
from heartbeat.web.errors import HttpError, internal_error
from heartbeat.web.feed_route import DEFAULT_LIMIT, wants_stream
from heartbeat.web.health import health, liveness, readiness
from heartbeat.web.responses import STREAM_HEADERS
from heartbeat.web.table import CALL, KLEIN, STREAM, Route, RouteTable


def get_status(api: Api, request: IRequest) -> Deferred[bytes]:
    return api.status(request).addCallback(_status_answer, request)


def _status_answer(answer: tuple[bytes, Position | None], request: IRequest) -> bytes:
    body, cursor = answer
    if cursor is not None:
        request.setHeader(b"Heartbeat-Cursor", str(cursor).encode("ascii"))
    return json_body(body, request)


def get_changes(api: Api, request: IRequest) -> Deferred[bytes]:
    """``GET /changes``: a page of the feed, or with ``Accept: text/event-stream`` its stream."""
    route = api.changes_route
    if not wants_stream(request):
        return route.page(request).addCallback(json_body, request)
    feed, after = route.start_stream(request)
    # Read before any header is sent: a position not kept is a plain 410.
    return feed.changes(after, DEFAULT_LIMIT).addCallback(_feed_stream, api, request, feed)


def _feed_stream(page: Page, api: Api, request: Any, feed: ChangeFeed) -> Deferred[bytes]:
    for name, value in STREAM_HEADERS:
        request.setHeader(name, value)
    if request.method == b"HEAD":
        return succeed(b"")
    route = api.changes_route
    ended: list[object] = []

    def end() -> None:
        if not ended:
            request.finish()

    route.streams.add(end)
    request.notifyFinish().addBoth(ended.append).addBoth(lambda _: route.streams.discard(end))
    done = ensureDeferred(route.stream(feed, page, request.write, request.notifyFinish()))
    # Past retention mid-stream (a reader far behind): the stream ends, and its
    # reconnect with Last-Event-ID gets the 410.
    done.addErrback(lambda f: None if f.check(PositionGone, CancelledError) else internal_error(f))
    done.addCallback(lambda _: end())
    return Deferred()


def get_health(api: Api, request: IRequest) -> bytes:
    return health(request, api.store, api.hub)


def get_livez(api: Api, request: IRequest) -> bytes:
    return liveness(request)


def get_readyz(api: Api, request: IRequest) -> bytes:
    return readiness(request, api.store, api.stopping)


def get_metrics(api: Api, request: IRequest) -> bytes:
    if api.meter is None:
        raise HttpError(404, "no metrics here")
    return api.meter.render(request)


ROUTES = RouteTable([
    Route("/ping", ("POST",), Api.ping, CALL, ping=True),
    Route("/leave", ("POST",), Api.leave, CALL),
    Route("/subscribe", ("GET",), Api.subscribe_many, STREAM),
    Route("/subscribe", ("POST",), Api.subscribe_posted, STREAM, max_body=SUBSCRIBE_BODY),
    Route("/subscribe/<userid>", ("GET",), Api.subscribe_one, STREAM),
    Route("/subscribe/<userid>/client/<clientid>", ("GET",), Api.subscribe_one, STREAM),
    Route("/status", ("GET",), get_status, KLEIN),
    Route("/changes", ("GET",), get_changes, KLEIN),
    Route("/health", ("GET",), get_health, KLEIN),
    Route("/livez", ("GET",), get_livez, KLEIN),
    Route("/readyz", ("GET",), get_readyz, KLEIN),
    # The app's backend (API_KEY): bulk reads, who is online, erasure, logout everywhere.
    Route("/status", ("POST",), backend.bulk_status, KLEIN, max_body=backend.MAX_BULK_BODY),
    Route("/online", ("GET",), backend.online, KLEIN),
    Route("/users/<path:userid>", ("DELETE",), backend.erase, KLEIN),
    Route("/users/<path:userid>/disconnect", ("POST",), backend.disconnect, KLEIN),
    Route("/metrics", ("GET",), get_metrics, KLEIN),
])
