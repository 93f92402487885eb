"""Handing one parsed request to a twisted.web site, on the edge's own connection.

twisted.web's ``Request`` talks to its channel through a handful of
methods (``getPeer``, ``getHost``, ``isSecure``, ``writeHeaders``,
``write``, ``writeSequence``, ``registerProducer``, ``unregisterProducer``,
``loseConnection``, ``requestDone``), the way Twisted's own
``_GenericHTTPChannelProtocol`` delegates to an HTTP/1.1 or HTTP/2 channel.
:class:`SiteChannel` is that channel for one request, over the edge's
connection, so the connection keeps its protocol (and TLS keeps working)
while Klein answers. ``tests/test_twisted_contracts.py`` pins that contract
on every Twisted release CI runs.

It knows the connection only as :class:`Connection`, a protocol the edge's
connection satisfies, so the edge imports this module and not the reverse.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import ISSLTransport
from twisted.web.http import NO_BODY_CODES
from twisted.web.server import Request, Site

from heartbeat.web.errors import HttpError
from heartbeat.web.request import ParsedRequest


class Connection(Protocol):
    """What a hand-over needs of the connection it happens on (the edge's)."""

    @property
    def transport(self) -> Any: ...

    def persists(self, request: ParsedRequest, delimited: bool) -> bool:
        """Whether the connection stays open after the answer (``delimited``: its end is known)."""

    def handed_done(self, request: ParsedRequest, persistent: bool) -> None:
        """The site finished its answer to ``request``."""


class SiteChannel:
    """What a twisted.web ``Request`` needs of its channel, for one request."""

    # No access log: Request.finish logs through ``channel.factory`` when set.
    factory = None

    def __init__(self, connection: Connection, parsed: ParsedRequest, site: Site) -> None:
        self.connection = connection
        self.parsed = parsed
        self.site = site
        self.transport = connection.transport
        self.requestFactory = site.requestFactory
        self._persistent = False

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def isSecure(self) -> bool:
        return ISSLTransport.providedBy(self.transport)

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        pairs = _header_pairs(headers)
        names = {name.lower() for name, _ in pairs}
        delimited = (
            b"content-length" in names or b"transfer-encoding" in names
            or self.parsed.is_head or int(code) in NO_BODY_CODES
        )
        self._persistent = self.connection.persists(self.parsed, delimited)
        lines = [b"HTTP/1.1 " + code + b" " + reason + b"\r\n"]
        lines.extend(name + b": " + value + b"\r\n" for name, value in pairs)
        if not self._persistent:
            lines.append(b"Connection: close\r\n")
        elif self.parsed.version == "1.0":
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        self.transport.write(b"".join(lines))

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.transport.writeSequence(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def loseConnection(self) -> None:
        self.transport.loseConnection()

    def requestDone(self, request: Request) -> None:
        self.connection.handed_done(self.parsed, self._persistent)


def _header_pairs(headers: Any) -> list[tuple[bytes, bytes]]:
    """Response headers as pairs: a ``Headers`` object, or older Twisteds' list of pairs."""
    if hasattr(headers, "getAllRawHeaders"):
        return [(name, value) for name, values in headers.getAllRawHeaders() for value in values]
    return list(headers)


def check_target(parsed: ParsedRequest) -> None:
    """Klein answers a path or Host that is not UTF-8 with an HTML 400 and a
    traceback in the log per request (a flood, for a hostile client); refuse
    those here instead, as JSON."""
    try:
        unquote_to_bytes(parsed.path).decode("utf-8")
        parsed.headers.get(b"host", b"").decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "URL or Host is not valid UTF-8") from None


def hand_to_site(connection: Connection, parsed: ParsedRequest, site: Site) -> Request:
    """Start ``site``'s answer to ``parsed``; the request, for ``connectionLost``.

    The request gets the body the edge read (twisted.web parses a
    form-encoded ``POST`` body into ``args``, as for any site).
    """
    check_target(parsed)
    request = site.requestFactory(SiteChannel(connection, parsed, site))
    for name, value in parsed.raw_headers:
        request.requestHeaders.addRawHeader(name, value)
    request.content = BytesIO(parsed.body)
    version = b"HTTP/1.0" if parsed.version == "1.0" else b"HTTP/1.1"
    request.requestReceived(parsed.method, parsed.url, version)
    return request
