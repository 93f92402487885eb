"""The two hot routes past Klein: ``POST /ping`` and ``GET /subscribe/<userid>``.

Every client pings every few seconds and holds a stream per contact, so these
two requests are nearly all the traffic and all the open connections.
Klein's per-request work (werkzeug URL binding and matching, the host name
it encodes, its Deferreds and closures) cost as much as the ping handler
itself (py-spy under ``wrk -c64``) and about a third of an idle stream's
memory (tracemalloc). This resource sends exactly those requests to the same
handlers the Klein routes use, with the same JSON errors, and hands every
other request to Klein unchanged. User ids with percent-escapes, and every
odd path, go to Klein too, so there is one set of routing rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from heartbeat.core.errors import Refused
from heartbeat.web.errors import HttpError, internal_error, render_error

Handler = Callable[..., Deferred[bytes]]

# A device stream (``/client/<clientid>``) is left to Klein, which passes the device on.
_SUBSCRIBE = re.compile(rb"/subscribe/([^/%]+)")


class HotRoutes(Resource):
    """``POST /ping`` to ``ping``, ``GET /subscribe/<userid>`` to ``subscribe``."""

    isLeaf = True

    def __init__(self, routes: IResource, ping: Handler, subscribe: Handler) -> None:
        super().__init__()
        self._routes = routes
        self._ping = ping
        self._subscribe = subscribe

    def render(self, request: IRequest) -> bytes | int:
        method, path = request.method, request.path
        if method == b"POST" and path == b"/ping":
            return _run(request, self._ping)
        if method == b"GET":
            userid = subscribe_path_user(path)
            if userid is not None:
                return _run(request, self._subscribe, userid)
        return self._routes.render(request)


def subscribe_path_user(path: bytes) -> str | None:
    """The user of a plain ``/subscribe/<userid>`` path.

    None for any other path, and for a user id that is not UTF-8 (Klein
    answers that with its own JSON 400).
    """
    match = _SUBSCRIBE.fullmatch(path)
    if match is None:
        return None
    try:
        return match[1].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _run(request: IRequest, handler: Handler, *args: str) -> bytes | int:
    """Call ``handler`` as Klein would, errors as JSON.

    Unlike Klein, a client that goes away cancels nothing: a ping already
    sent to Redis is stored whether or not anyone hears the answer, and a
    stream's request is over once the stream has the connection.
    """
    try:
        d = handler(request, *args)
    except (HttpError, Refused) as error:
        return render_error(request, error)
    except Exception:
        return render_error(request, internal_error(Failure()))
    d.addCallbacks(_answer, _fail, (request,), None, (request,))
    return NOT_DONE_YET


def _answer(body: bytes, request: IRequest) -> None:
    if request.channel is not None:  # the client may have gone meanwhile
        request.write(body)
        request.finish()


def _fail(failure: Failure, request: IRequest) -> None:
    error = failure.value if failure.check(HttpError, Refused) else internal_error(failure)
    _answer(render_error(request, error), request)
