"""The app's backend, as tests call it: the API key, its routes, many pings fast, and the
change feed read and applied as a backend does (SPEC §8)."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from collections import Counter
from urllib.parse import quote

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


def changes_since(port: int, after: str | None = None) -> list[dict]:
    """Every change ``GET /changes`` has after ``after`` (without it: from the oldest
    kept), page after page until one comes back empty."""
    found: list[dict] = []
    while True:
        query = "/changes?limit=1000" + ("" if after is None else f"&after={quote(after)}")
        code, body = request(port, "GET", query)
        assert code == 200, (code, body)
        page = json.loads(body)
        found += page["changes"]
        after = page["next"]
        if not page["changes"]:
            return found


class FeedFollower(threading.Thread):
    """A backend following ``GET /changes`` live, by long polls from ``after``, until
    stopped and a page comes back empty. A ``5xx`` is asked again, as a backend would:
    ``503``s (the store away) are counted, any other answer is kept in ``failed``."""

    def __init__(self, port: int, after: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.after = after
        self.changes: list[dict] = []
        self.unavailable = 0
        self.failed: list[tuple[int, bytes]] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                finishing = self.stopping.is_set()
                code, body = request(self.port, "GET",
                                     f"/changes?limit=1000&wait=1&after={quote(self.after)}")
                if code != 200:
                    assert code >= 500, (code, body)
                    if code == 503:
                        self.unavailable += 1
                    else:
                        self.failed.append((code, body))
                    time.sleep(0.1)
                    continue
                page = json.loads(body)
                self.changes += page["changes"]
                self.after = page["next"]
                if finishing and not page["changes"]:
                    return
        except BaseException as error:  # handed to the test by stop()
            self.error = error

    def stop(self) -> list[dict]:
        """Every change read, once the feed has been read to its end."""
        self.stopping.set()
        self.join(60)
        assert not self.is_alive(), "the follower never reached the feed's end"
        if self.error is not None:
            raise self.error
        return self.changes


def statuses_changed(changes: list[dict], userid: str) -> list[int]:
    """The statuses of ``userid``'s own changes (``online``, ``status``), in feed order,
    as the integers ``PingLoad`` sent."""
    return [int(c["status"]) for c in changes
            if c["userid"] == userid and c["type"] in ("online", "status")]


def apply(state: dict, change: dict) -> None:
    """What a backend keeps from the feed: each user's online, status and devices."""
    user = state.setdefault(change["userid"], {"devices": {}})
    if "clientid" in change:
        user["devices"][change["clientid"]] = change["online"]
    else:
        user["online"], user["status"] = change["online"], change["status"]


def from_status(body: dict) -> dict:
    """The same of a ``/status`` answer."""
    return {userid: {"online": s["online"], "status": s["status"],
                     "devices": {c: d["online"] for c, d in s["devices"].items()}}
            for userid, s in body.items() if s is not None}


def in_user_order(delivered: list[dict], recorded: list[dict]) -> None:
    """Each user's changes, first deliveries only, come in the order recorded."""
    first: dict[str, dict] = {}
    for change in delivered:
        first.setdefault(change["id"], change)
    order = [c["id"] for c in delivered if first.pop(c["id"], None) is not None]
    for userid in {c["userid"] for c in recorded}:
        mine = [c["id"] for c in recorded if c["userid"] == userid]
        assert [i for i in order if i in set(mine)] == mine, userid
