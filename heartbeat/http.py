"""The HTTP layer under Klein: body limits enforced while bytes arrive.

twisted.web buffers a whole request body before any route runs, so the
4 KiB ping limit has to live here: a declared ``Content-Length`` over it is
answered 413 before the body is read, and an undeclared (chunked) body stops
being kept once it passes the limit.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from heartbeat.errors import error_body
from heartbeat.status import MAX_BODY

# How long a refused client may keep sending its body before it is cut off.
_LINGER = 2.0


class HeartbeatRequest(Request):
    """A request that keeps at most ``MAX_BODY`` bytes of its body."""

    body_too_large = False

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        if self.content.tell() + len(data) > MAX_BODY:
            self.body_too_large = True
            self.content = BytesIO()
            return
        self.content.write(data)


class HeartbeatChannel(HTTPChannel):
    """Refuses an announced oversized body at once, without reading it."""

    _refused = False
    _linger: IDelayedCall | None = None

    def allHeadersReceived(self) -> None:
        if self.length is not None and self.length > MAX_BODY:
            self._refuse_too_large()
            return
        super().allHeadersReceived()

    def _refuse_too_large(self) -> None:
        body = error_body(f"request body is larger than {MAX_BODY} bytes")
        self.transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\n"
            b"Content-Type: application/json\r\n"
            b"Connection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        self._refused = True
        # Half-close and drain: closing with unread input would reset the
        # connection and could destroy the 413 before the client reads it.
        self.setTimeout(None)
        half_close = getattr(self.transport, "loseWriteConnection", None)
        (half_close or self.transport.loseConnection)()
        self._linger = self.callLater(_LINGER, self.transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        # Body bytes that came in the same read as the refused headers.
        if not self._refused:
            super().rawDataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)


class HeartbeatSite(Site):
    protocol = HeartbeatChannel
    requestFactory = HeartbeatRequest

    def __init__(self, resource: IResource, **kwargs: Any) -> None:
        # Ping bodies are parsed by heartbeat.status; twisted.web's own form
        # parsing (request.args) runs the email package's header parser on
        # every POST: a third of the ping path's time.
        super().__init__(resource, parsePOSTFormSubmission=False, **kwargs)

    def log(self, request: Request) -> None:
        """No access log: a line per ping would dwarf everything else."""
