"""The app's backend, as end-to-end tests call it: the API key, its routes, many pings fast."""

from __future__ import annotations

import http.client
import json
import re
import socket
from collections import Counter

from tests.helpers.clients import post_ping
from tests.helpers.waiting import wait_for

KEY = "backend-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Every backend route, with a body it takes.
ROUTES = [("POST", "/status", b'{"users": ["a"]}'), ("GET", "/online?list=1", b""),
          ("DELETE", "/users/a", b""), ("POST", "/users/a/disconnect?leave=1", b"")]


def request(port: int, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request with the API key (unless ``headers`` say otherwise); (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=dict(AUTH if headers is None
                                                                    else headers))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def status(port: int, users: list[str], query: str = "") -> dict:
    """``POST /status`` for ``users``."""
    code, body = request(port, "POST", "/status" + query, json.dumps({"users": users}).encode())
    assert code == 200, body
    return json.loads(body)


def page_through(port: int, limit: int) -> list[str]:
    """Every user ``GET /online?list=1`` names, page after page."""
    seen: list[str] = []
    after = None
    while True:
        query = f"/online?list=1&limit={limit}" + (f"&after={after}" if after else "")
        code, body = request(port, "GET", query)
        assert code == 200, body
        page = json.loads(body)
        assert len(page["users"]) <= limit
        seen += page["users"]
        after = page["next"]
        if after is None:
            return seen


def ping_many(port: int, users: list[str], clientid: str = "c1") -> None:
    """One pipelined connection of pings: fast, and every one answered 200."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for start in range(0, len(users), 500):
            batch = users[start:start + 500]
            sock.sendall(b"".join(
                b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nX-User-Claim: "
                + json.dumps({"userid": u, "clientid": clientid}).encode() + b"\r\n\r\n0"
                for u in batch))
            received = b""
            while received.count(b"HTTP/1.1 ") < len(batch):
                data = sock.recv(1 << 16)
                assert data, "connection closed"
                received += data
            codes = Counter(re.findall(rb"HTTP/1\.1 (\d{3})", received))
            assert codes == {b"200": len(batch)}, (codes, received[-300:])


def old_device_is_forgotten(first: int, second: int, userid: str = "r") -> None:
    """With a short ``DEVICE_RETENTION``: a device that left (pinged on ``first``)
    goes from ``/status`` (read on ``second``); one still online stays."""
    old = {"X-User-Claim": json.dumps({"userid": userid, "clientid": "old"})}
    assert post_ping(first, "0", headers=old)[0] == 200
    assert request(first, "POST", "/leave", headers=old)[0] == 200
    assert post_ping(second, "1", userid=userid)[0] == 200  # device c1, online
    assert set(status(second, [userid])[userid]["devices"]) == {"old", "c1"}
    wait_for(lambda: set(status(second, [userid])[userid]["devices"]) == {"c1"}, 15)
