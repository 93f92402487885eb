"""The core tests' view of the in-memory service (tests/wire.py): raw bytes in and out."""

from __future__ import annotations

from tests.wire import Connection, Wire, claim, parse_response, request_bytes


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
