"""Server-Sent Events framing and the open streams they are written to."""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from heartbeat.presence import Ping

KEEPALIVE = b":\n\n"


def encode_event(ping: Ping) -> bytes:
    """One event's bytes, built once and written to every subscriber.

    ``json.dumps`` escapes every control character and non-ASCII code point,
    so no user id or status can smuggle a line break into the frame.
    """
    payload = json.dumps(
        {"time": ping.time, "status": ping.status, "userid": ping.userid},
        separators=(",", ":"),
    )
    return b"data: " + payload.encode("ascii") + b"\n\n"


class Stream:
    """One open ``text/event-stream`` response, watching one or more users.

    ``finished`` is what the route returns to Klein: it never fires on its
    own; the hub's close fires it (so Klein ends the response) and Klein
    cancels it when the client goes away.
    """

    def __init__(self, request: IRequest, userids: tuple[str, ...]) -> None:
        self.request = request
        self.userids = userids
        # The last ping this stream was sent per user, to resend only what it
        # missed after the bus comes back.
        self.seen: dict[str, Ping] = {}
        self.finished: Deferred[bytes] = Deferred()
        self.closed = False

    def start(self) -> None:
        """Send the headers now, so the client sees the stream open at once."""
        request = self.request
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.write(b"")

    def send(self, ping: Ping, frame: bytes) -> None:
        self.seen[ping.userid] = ping
        self.request.write(frame)

    def comment(self) -> None:
        self.request.write(KEEPALIVE)

    def close(self) -> None:
        """End the response cleanly (the client sees the stream end)."""
        if not self.closed:
            self.closed = True
            self.finished.callback(b"")
