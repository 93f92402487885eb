"""The whole service in memory: real HTTP parsing, no sockets, a fake clock."""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport

from heartbeat.config import load_settings
from heartbeat.tap import build_service


class Connection:
    """One client connection to the in-memory site."""

    def __init__(self, site) -> None:
        self.transport = StringTransport()
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.channel.makeConnection(self.transport)
        # As a real transport knows its protocol: an event stream takes it over.
        self.transport.protocol = self.channel

    def send(self, data: bytes) -> None:
        self.transport.protocol.dataReceived(data)

    def take(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def close(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.transport.protocol.connectionLost(Failure(ConnectionDone()))


class MemoryServer:
    """``build_service`` wired to a MemoryReactorClock instead of the reactor."""

    def __init__(self, **env: str) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(1_800_000_000)
        settings = load_settings({}, env, {})
        endpoint = TCP4ServerEndpoint(self.clock, 8080)
        self.service = build_service(settings, self.clock, endpoint)
        self.site = self.service.listener.factory
        self.hub = self.service.hub
        self.store = self.service.store

    def connect(self) -> Connection:
        return Connection(self.site)

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> Connection:
        conn = self.connect()
        head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
        conn.send(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{head}{length}\r\n".encode() + body)
        return conn

    def ping(self, userid: str, body: bytes | str, content_type: str | None = None) -> tuple[int, bytes]:
        headers = {"X-User-Claim": json.dumps({"userid": userid, "clientid": "c"})}
        if content_type:
            headers["Content-Type"] = content_type
        raw = body.encode() if isinstance(body, str) else body
        return response(self.request("POST", "/ping", raw, headers).take())


def response(raw: bytes) -> tuple[int, bytes]:
    """(status, body) of a complete, non-chunked response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body
