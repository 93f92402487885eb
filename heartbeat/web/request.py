"""One request as the edge's parser read it: what routes and core rules read of it."""

from __future__ import annotations

from twisted.web.http import parse_qs


class ParsedRequest:
    """One request as llhttp parsed it.

    ``getHeader`` and ``args`` are what :class:`~heartbeat.core.request_view.RequestView`
    asks of a request; the raw headers are kept, in order, for the hand-over
    to twisted.web.
    """

    __slots__ = (
        "method", "url", "path", "query", "version", "raw_headers", "headers",
        "body", "keep_alive", "_args",
    )

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.path = b""
        self.query = b""
        self.version = "1.1"
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.keep_alive = True
        self._args: dict[bytes, list[bytes]] | None = None

    def getHeader(self, name: bytes) -> bytes | None:
        return self.headers.get(name.lower())

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        if self._args is None:
            self._args = parse_qs(self.query, 1)
        return self._args

    @property
    def is_head(self) -> bool:
        return self.method == b"HEAD"

    @property
    def has_body(self) -> bool:
        """Whether a body follows the head (a length above 0, or chunks)."""
        headers = self.headers
        return b"transfer-encoding" in headers or headers.get(b"content-length", b"0").strip(b"0") != b""
