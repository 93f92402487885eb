"""The bytes of the answers the edge writes itself: status lines, heads, JSON errors, chunks.

Built from parts that change at most once a second (the ``Date``), so a
ping's answer is a few concatenations, not a header table.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from http import HTTPStatus

from twisted.web.http import datetimeToString

from heartbeat.core.sse import RETRY
from heartbeat.web.errors import HttpError, error_body

Headers = Iterable[tuple[bytes, bytes]]

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# The end of a chunked body.
LAST_CHUNK = b"0\r\n\r\n"

# What an event stream's response says of itself (a HEAD gets them too).
STREAM_HEADERS = (
    (b"Content-Type", b"text/event-stream"),
    (b"Cache-Control", b"no-cache"),
    (b"X-Accel-Buffering", b"no"),
)


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


RETRY_CHUNK = chunk(RETRY)


@lru_cache(maxsize=128)
def status_line(code: int) -> bytes:
    try:
        reason = HTTPStatus(code).phrase.encode("ascii")
    except ValueError:
        reason = b"Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (code, reason)


@lru_cache(maxsize=4)
def date_line(second: int) -> bytes:
    return b"Date: " + datetimeToString(second) + b"\r\n"


def head(code: int, second: int, headers: Headers, connection: bytes | None) -> bytes:
    """A response head; ``connection`` is the ``Connection`` header's value, if any."""
    lines = [status_line(code), date_line(second)]
    lines.extend(name + b": " + value + b"\r\n" for name, value in headers)
    if connection is not None:
        lines.append(b"Connection: " + connection + b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def whole(code: int, second: int, headers: Headers, body: bytes,
          connection: bytes | None, with_body: bool = True) -> bytes:
    """A complete response with a ``Content-Length``; HEAD gets the head alone."""
    all_headers = [*headers, (b"Content-Length", b"%d" % len(body))]
    return head(code, second, all_headers, connection) + (body if with_body else b"")


def error(error: HttpError, second: int, headers: Headers, connection: bytes | None,
          with_body: bool = True) -> bytes:
    """``error`` as JSON, with ``headers`` (CORS) and its own (``Retry-After``, …)."""
    all_headers = [*headers, (b"Content-Type", b"application/json"), *error.headers.items()]
    return whole(error.code, second, all_headers, error_body(error.message), connection, with_body)


@lru_cache(maxsize=64)
def stream_head(headers: tuple[tuple[bytes, bytes], ...], second: int, chunked: bool) -> bytes:
    """An event stream's head and its first bytes (the ``retry:`` field).

    Built once a second per set of ``headers`` (CORS), however many streams
    open in that second. Without chunking (HTTP/1.0) the stream ends when
    the connection does.
    """
    all_headers = [*headers, *STREAM_HEADERS]
    if chunked:
        all_headers.append((b"Transfer-Encoding", b"chunked"))
        return head(200, second, all_headers, None) + RETRY_CHUNK
    return head(200, second, all_headers, b"close") + RETRY


def out_of_descriptors(second: int) -> bytes:
    """What a connection accepted on the reserved descriptor is told before it is closed."""
    refused = HttpError(503, "the server is out of file descriptors, retry later",
                        {b"Retry-After": b"1"})
    return error(refused, second, (), b"close")
