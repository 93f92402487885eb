"""Errors that end a request with a JSON body, and how that body is built."""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

log = Logger()


class ApiError(Exception):
    """A client-visible failure: the status code and the message to send.

    Raised anywhere on a request's path; one handler in the app renders it,
    so every error of the API has the same ``{"error": ...}`` shape.
    """

    def __init__(
        self, code: int, message: str, headers: dict[bytes, bytes] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode("utf-8")


def render_error(request: IRequest, error: ApiError) -> bytes:
    """Set status and headers for ``error`` on ``request`` and return its body."""
    request.setResponseCode(error.code)
    request.setHeader(b"Content-Type", b"application/json")
    for name, value in error.headers.items():
        request.setHeader(name, value)
    body = error_body(error.message)
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body


def internal_error(failure: Failure) -> ApiError:
    """A bug's answer: logged here with its traceback, a bare 500 to the client."""
    log.failure("request failed", failure)
    return ApiError(500, "internal error")
