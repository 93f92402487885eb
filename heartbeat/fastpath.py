"""``POST /ping`` past Klein: the hottest request skips the router.

Every client pings every few seconds, so the ping is most of the traffic.
Klein's per-request work (werkzeug URL binding and matching, the host name
it encodes, its Deferred plumbing) cost as much as the ping handler itself
(py-spy under ``wrk -c64``), so this resource answers exactly
``POST /ping`` with the same handler and the same JSON errors, and hands
every other request to Klein unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from heartbeat.errors import ApiError, render_error

log = Logger()

PingHandler = Callable[[IRequest], Deferred[bytes]]


class PingFastPath(Resource):
    """Routes ``POST /ping`` to ``handler`` directly, the rest to ``routes``."""

    isLeaf = True

    def __init__(self, routes: IResource, handler: PingHandler) -> None:
        super().__init__()
        self._routes = routes
        self._handler = handler

    def render(self, request: IRequest) -> bytes | int:
        if request.path != b"/ping" or request.method != b"POST":
            return self._routes.render(request)
        try:
            d = self._handler(request)
        except ApiError as error:
            return render_error(request, error)
        d.addCallbacks(_answer, _fail, (request,), None, (request,))
        return NOT_DONE_YET


def _answer(body: bytes, request: IRequest) -> None:
    if request.channel is not None:  # the client may have gone meanwhile
        request.write(body)
        request.finish()


def _fail(failure: Failure, request: IRequest) -> None:
    if failure.check(ApiError):
        error = failure.value
    else:
        log.failure("ping failed", failure)
        error = ApiError(500, "internal error")
    _answer(render_error(request, error), request)
