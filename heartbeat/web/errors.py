"""Errors as HTTP: the status code of each refusal, and the JSON body every error has.

Core and store code refuse requests in domain terms (:mod:`heartbeat.core.errors`);
this is the one place that says which status code each of those is, and the
few refusals that only HTTP knows (no such path, wrong method, too slow,
headers too large) are :class:`HttpError`.
"""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from heartbeat.core.changes import PositionGone
from heartbeat.core.errors import (
    BadCredentials,
    BadInput,
    NotAllowed,
    Refused,
    TooLarge,
    Unavailable,
)

log = Logger()

# RFC 6750: a 401 tells the client which scheme to use.
_CHALLENGE = {b"WWW-Authenticate": b'Bearer realm="heartbeat"'}

_CODES: tuple[tuple[type[Refused], int], ...] = (
    (BadInput, 400), (BadCredentials, 401), (NotAllowed, 403),
    (TooLarge, 413), (Unavailable, 503), (PositionGone, 410),
)


class HttpError(Exception):
    """A client-visible failure: the status code, the message and any headers to send."""

    def __init__(
        self, code: int, message: str, headers: dict[bytes, bytes] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


def as_http(error: Refused | HttpError) -> HttpError:
    """The HTTP answer to ``error``."""
    if isinstance(error, HttpError):
        return error
    if isinstance(error, Unavailable):
        return HttpError(503, error.message, {b"Retry-After": str(error.retry_after).encode()})
    if isinstance(error, BadCredentials):
        return HttpError(401, error.message, dict(_CHALLENGE))
    for kind, code in _CODES:
        if isinstance(error, kind):
            return HttpError(code, error.message)
    return HttpError(400, error.message)


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode("utf-8")


def render_error(request: IRequest, error: Refused | HttpError) -> bytes:
    """Set status and headers for ``error`` on ``request`` and return its body."""
    http = as_http(error)
    request.setResponseCode(http.code)
    request.setHeader(b"Content-Type", b"application/json")
    for name, value in http.headers.items():
        request.setHeader(name, value)
    body = error_body(http.message)
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body


def internal_error(failure: Failure) -> HttpError:
    """A bug's answer: logged here with its traceback, a bare 500 to the client."""
    log.failure("request failed", failure)
    return HttpError(500, "internal error")
