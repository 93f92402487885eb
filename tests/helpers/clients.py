"""Clients over real sockets: a ping, a GET, and a raw-socket EventSource reader."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from itertools import cycle

from tests.helpers.claims import claim, claim_header


class SSEClient:
    """A raw-socket EventSource reader: sees exactly the bytes the server sends."""

    def __init__(self, port: int, path: str, headers: Mapping[str, str] | None = None,
                 rcvbuf: int | None = None, tls: ssl.SSLContext | None = None,
                 body: bytes | None = None) -> None:
        # ``rcvbuf`` (set before connecting, so the window stays small) makes
        # a client that stops reading block the server quickly.
        sock = socket.socket()
        sock.settimeout(10)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(("127.0.0.1", port))
        # ``tls``: over TLS to "localhost", as a client checking the name would.
        self.sock = sock if tls is None else tls.wrap_socket(sock, server_hostname="localhost")
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        # ``body``: a POST (``POST /subscribe``'s user list).
        method = "GET" if body is None else "POST"
        if body is not None:
            extra += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
                          f"Accept: text/event-stream\r\n{extra}\r\n".encode() + (body or b""))
        self.buffer = b""
        head = self._read_until(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.lower(): v.strip() for k, v in
                        (line.split(":", 1) for line in header_lines if line)}
        self.chunked = self.headers.get("transfer-encoding") == "chunked"
        self.body = b""

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buffer += data
        head, self.buffer = self.buffer.split(marker, 1)
        return head

    def _fill_body(self) -> bool:
        """Move one more piece of the body into ``self.body``; False at its end."""
        if not self.chunked:
            if not self.buffer:
                data = self.sock.recv(65536)
                if not data:
                    return False
                self.buffer = data
            self.body += self.buffer
            self.buffer = b""
            return True
        size = int(self._read_until(b"\r\n").split(b";")[0], 16)
        if size == 0:
            return False
        while len(self.buffer) < size + 2:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed mid-chunk")
            self.buffer += data
        self.body += self.buffer[:size]
        self.buffer = self.buffer[size + 2:]
        return True

    def frame(self, timeout: float = 5) -> bytes:
        """The next raw frame: a comment or ``retry:`` line alone (heartbeat
        sends those with no blank line after them), else up to and
        including the blank line that ends an event."""
        self.sock.settimeout(timeout)
        while True:
            if self.body.startswith((b":", b"retry:")) and b"\n" in self.body:
                line, self.body = self.body.split(b"\n", 1)
                return line + b"\n"
            if b"\n\n" in self.body:
                frame, self.body = self.body.split(b"\n\n", 1)
                return frame + b"\n\n"
            if not self._fill_body():
                raise ConnectionError("stream ended")

    def event(self, timeout: float = 5) -> dict:
        """The next event's data as JSON, skipping comments and field-only frames."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.frame(max(0.01, deadline - time.monotonic()))
            data = [line[5:].lstrip(b" ") for line in frame.split(b"\n")
                    if line.startswith(b"data:")]
            if data:
                return json.loads(b"\n".join(data))

    def message(self, timeout: float = 5) -> tuple[str | None, str, dict]:
        """The next event as (its ``event:`` name or None, its id, its data as JSON)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.frame(max(0.01, deadline - time.monotonic()))
            fields = dict(line.split(b": ", 1) for line in frame.split(b"\n") if b": " in line)
            if b"data" in fields:
                name = fields.get(b"event")
                return (None if name is None else name.decode(), fields[b"id"].decode(),
                        json.loads(fields[b"data"]))

    def no_event(self, wait: float = 0.5) -> None:
        """Assert that no event arrives within ``wait`` seconds."""
        try:
            event = self.event(wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected event {event}")

    def ended(self, timeout: float = 5) -> bool:
        """Whether the response ends cleanly (its last chunk) within ``timeout``.

        False when the connection drops mid-response instead; a timeout raises.
        """
        self.sock.settimeout(timeout)
        try:
            while self._fill_body():
                pass
        except ConnectionError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()


def post_ping(port: int, body: bytes | str, userid: str | None = "alice",
              content_type: str | None = None, headers: Mapping[str, str] | None = None,
              path: str = "/ping") -> tuple[int, dict[str, str], bytes]:
    """POST a ping over a fresh connection; (status, headers, body)."""
    if isinstance(body, str):
        body = body.encode()
    all_headers = dict(headers or {})
    if userid is not None:
        all_headers.setdefault("X-User-Claim", claim(userid))
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=all_headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def get(port: int, path: str, headers: Mapping[str, str] | None = None,
        method: str = "GET", tls: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    """A request with no body over a fresh connection (``tls``: to "localhost"); (status, headers, body)."""
    conn: http.client.HTTPConnection
    if tls is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("localhost", port, context=tls, timeout=10)
    try:
        conn.request(method, path, headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def health(port: int, tls: ssl.SSLContext | None = None) -> dict:
    """``/health``'s JSON, which must be a 200."""
    status, _, body = get(port, "/health", tls=tls)
    assert status == 200, (status, body)
    return json.loads(body)


class PingLoad(threading.Thread):
    """Pings each user in turn, through each port in turn, with a rising counter as its
    status (so every ping is a change), until stopped.

    ``acknowledged[userid]`` holds every status answered ``200``, in order; what a
    ``503`` refused may or may not have been stored.
    """

    def __init__(self, ports: list[int], users: list[str]) -> None:
        super().__init__(daemon=True)
        self.ports = cycle(ports)
        self.users = users
        self.acknowledged: dict[str, list[int]] = {userid: [] for userid in users}
        self.refused = 0
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        try:
            while not self.stopping.is_set():
                n += 1
                for userid in self.users:
                    code = post_ping(next(self.ports), str(n), None, headers=claim_header(userid))[0]
                    if code == 200:
                        self.acknowledged[userid].append(n)
                    else:
                        assert code == 503, code
                        self.refused += 1
                time.sleep(0.01)
        except BaseException as error:  # handed to the test by stop()
            self.error = error

    def answered(self, at_least: int) -> bool:
        """Whether every user has had ``at_least`` pings acknowledged."""
        return all(len(acked) >= at_least for acked in self.acknowledged.values())

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        if self.error is not None:
            raise self.error
