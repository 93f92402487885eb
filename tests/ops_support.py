"""A whole service on a fake reactor, driven by raw HTTP bytes: no sockets."""

from __future__ import annotations

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.http import HTTPChannel

from heartbeat.config import load_settings
from heartbeat.service import HeartbeatService
from heartbeat.tap import build_service


def fake_service(**environ: str) -> tuple[HeartbeatService, MemoryReactorClock]:
    """A service built as ``twistd`` builds it, listening on a fake reactor."""
    reactor = MemoryReactorClock()
    settings = load_settings({}, environ=environ, dotenv={})
    endpoint = serverFromString(reactor, "tcp:8080")
    return build_service(settings, reactor, endpoint), reactor


class Transport(StringTransport):
    """A StringTransport that can half-close, as TCP can."""

    def loseWriteConnection(self) -> None:
        self.disconnecting = True


def connect(service: HeartbeatService) -> tuple[HTTPChannel, StringTransport]:
    channel = service.site.buildProtocol(None)
    transport = Transport()
    channel.makeConnection(transport)
    return channel, transport


def ping_bytes(status: str = "1", userid: str = "alice") -> bytes:
    body = f"status={status}".encode()
    return (
        b"POST /ping HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b'X-User-Claim: {"userid": "' + userid.encode() + b'"}\r\n'
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def get_bytes(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
