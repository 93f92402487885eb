"""The real site, wired by ``build_service``, spoken to over in-memory transports.

Every byte goes through heartbeat's own edge, Klein routes, hub
and store, with a fake clock and no sockets: fast and deterministic enough
to run thousands of hostile requests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport

from heartbeat.daemon.config import load_settings
from heartbeat.daemon.tap import build_service
from tests.helpers.claims import claim


class FakeTransport(StringTransport):
    """A StringTransport that also half-closes, as the 4xx refusals do."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class StreamEnd(StringTransport):
    """A stream's transport for core tests: frames written bare, ``end`` recorded."""

    ended = False

    def send(self, frame) -> None:  # type: ignore[no-untyped-def]
        self.write(frame.data)

    def end(self) -> None:
        self.ended = True
        self.loseConnection()


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    complete: bool
    rest: bytes = b""
    chunks: list[bytes] = field(default_factory=list)

    def json(self) -> object:
        return json.loads(self.body)


def parse_response(data: bytes) -> Response | None:
    """The first response in ``data``; a chunked one may still be open."""
    if b"\r\n\r\n" not in data:
        return None
    head, rest = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1])
    if headers.get(b"transfer-encoding") == b"chunked":
        return _dechunk(status, headers, rest)
    length = int(headers.get(b"content-length", b"0"))
    return Response(status, headers, rest[:length], len(rest) >= length, rest[length:])


def _dechunk(status: int, headers: dict[bytes, bytes], data: bytes) -> Response:
    chunks = []
    at = 0
    while True:
        eol = data.find(b"\r\n", at)
        if eol < 0:
            break
        size = int(data[at:eol], 16)
        start = eol + 2
        if len(data) < start + size + 2:
            break
        if size == 0:
            return Response(status, headers, b"".join(chunks), True, data[start + 2:], chunks)
        chunks.append(data[start:start + size])
        at = start + size + 2
    return Response(status, headers, b"".join(chunks), False, data[at:], chunks)


class Connection:
    """One client connection to the edge, as every real one starts."""

    def __init__(self, wire: Wire) -> None:
        self.transport = FakeTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol = wire.edge.buildProtocol(None)
        self.transport.protocol = protocol
        protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.transport.protocol.dataReceived(data)

    def response(self) -> Response | None:
        return parse_response(self.transport.value())

    def take(self) -> bytes:
        """Every byte the server wrote since the last take."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def close(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.transport.protocol.connectionLost(Failure(ConnectionDone()))


class Wire:
    """A whole heartbeat (in-process store) with settings from ``env``."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.clock = MemoryReactorClock()
        self.settings = load_settings({}, {"DATABASE": ":memory:", **(env or {})}, {})
        # Listening on the fake reactor, so the service can start and stop.
        endpoint = TCP4ServerEndpoint(self.clock, 8080)
        self.service = build_service(self.settings, self.clock, endpoint)
        self.edge = self.service.edge
        self.hub = self.service.hub
        self.store = self.service.store

    def connect(self) -> Connection:
        return Connection(self)

    def request(self, method: str, path: str, headers: Mapping[str, str | bytes] | None = None,
                body: bytes = b"") -> Response:
        """Send one request on a new connection; its (possibly still open) response."""
        conn = self.connect()
        conn.send(request_bytes(method, path, headers, body))
        response = conn.response()
        assert response is not None, f"no response to {method} {path}: {conn.transport.value()!r}"
        return response

    def ping(self, userid: str, body: bytes = b"0", headers: Mapping[str, str | bytes] | None = None,
             path: str = "/ping") -> Response:
        all_headers: dict[str, str | bytes] = {"X-User-Claim": claim(userid)}
        all_headers.update(headers or {})
        return self.request("POST", path, all_headers, body)


def stored_pings(store) -> dict:  # type: ignore[no-untyped-def]
    """The in-process store's latest ping of each user who pinged."""
    return {userid: devices.latest for userid, devices in store._users.items()}


def request_bytes(method: str, path: str | bytes,
                  headers: Mapping[str, str | bytes] | None = None, body: bytes = b"") -> bytes:
    if isinstance(path, str):
        path = path.encode()
    lines = [method.encode() + b" " + path + b" HTTP/1.1", b"Host: localhost"]
    for name, value in (headers or {}).items():
        if isinstance(value, str):
            value = value.encode()
        lines.append(name.encode() + b": " + value)
    if body or method == "POST":
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def events(response: Response) -> list[dict]:
    """The data of every complete event in an SSE response so far."""
    found = []
    for frame in response.body.split(b"\n\n")[:-1]:
        data = [line[6:] for line in frame.split(b"\n") if line.startswith(b"data: ")]
        if data:
            found.append(json.loads(b"\n".join(data)))
    return found


# The setting's default, which a MemoryServer runs with unless told otherwise.
PRESENCE_TIMEOUT = 60


class MemoryServer(Wire):
    """A :class:`Wire` at a realistic time, spoken to in raw bytes.

    ``send`` opens a connection and leaves it to the test to ``take`` what
    the server wrote; ``ping`` answers ``(status, body)``.
    """

    def __init__(self, **env: str) -> None:
        super().__init__(env)
        self.clock.advance(1_800_000_000)

    def send(self, method: str, path: str, body: bytes = b"",
             headers: dict[str, str] | None = None) -> Connection:
        conn = self.connect()
        conn.send(request_bytes(method, path, headers, body))
        return conn

    def ping_raw(self, userid: str, body: bytes | str,
                 content_type: str | None = None) -> tuple[int, bytes]:
        headers = {"X-User-Claim": claim(userid)}
        if content_type:
            headers["Content-Type"] = content_type
        raw = body.encode() if isinstance(body, str) else body
        return response(self.send("POST", "/ping", raw, headers).take())


def response(raw: bytes) -> tuple[int, bytes]:
    """(status, body) of a response."""
    parsed = parse_response(raw)
    return parsed.status, parsed.body


def samples(server: MemoryServer) -> dict[tuple[str, tuple], float]:
    """Every sample of a ``/metrics`` scrape, through the real route, keyed by name and labels."""
    raw = server.send("GET", "/metrics").take()
    assert b"Content-Type: text/plain; version=" in raw.partition(b"\r\n\r\n")[0]
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response(raw)[1].decode())
        for s in family.samples
    }


# A presence scenario in a few words: a device pings or leaves, a stream watches.


def ping(server: MemoryServer, status: str, device: str = "phone", userid: str = "alice") -> int:
    return response(server.send("POST", "/ping", status.encode(),
                                {"X-User-Claim": claim(userid, device)}).take())[0]


def leave(server: MemoryServer, device: str = "phone", userid: str = "alice") -> int:
    return response(server.send("POST", "/leave", b"bye",
                                {"X-User-Claim": claim(userid, device)}).take())[0]


def watch(server: MemoryServer, path: str = "/subscribe/alice",
          headers: dict[str, str] | None = None) -> Connection:
    conn = server.connect()
    conn.send(request_bytes("GET", path, headers))
    return conn


def seen(conn: Connection) -> list[tuple[str, bool]]:
    """(status, online) of every event the stream sent so far."""
    return [(e["status"], e["online"]) for e in events(conn.response())]


def ids(conn: Connection) -> list[str]:
    return [line[4:].decode() for line in conn.response().body.split(b"\n")
            if line.startswith(b"id: ")]
