"""Server-Sent Events framing and the open streams they are written to."""

from __future__ import annotations

import json
from hashlib import blake2b

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from heartbeat.presence import Ping

KEEPALIVE = b":\n\n"
# How long a browser waits before reconnecting a dropped stream (ms); sent
# first on every stream, so a restart costs clients seconds, not the
# browser's own default.
RETRY_MS = 2000
RETRY = b"retry: %d\n\n" % RETRY_MS


def event_id(ping: Ping) -> str:
    """The ``id:`` of ``ping``'s event: ``<time>-<hash of userid and status>``.

    A fingerprint of the ping alone, never of the stream, so one frame serves
    every subscriber; ASCII with no line breaks whatever the user id holds.
    A browser hands the last one back as ``Last-Event-ID`` on reconnect.
    """
    key = f"{ping.userid}\0{ping.status}".encode("utf-8", "surrogatepass")
    return f"{ping.time}-{blake2b(key, digest_size=6).hexdigest()}"


def encode_event(ping: Ping) -> bytes:
    """One event's bytes, built once and written to every subscriber.

    ``json.dumps`` escapes every control character and non-ASCII code point,
    so no user id or status can smuggle a line break into the frame.
    """
    payload = json.dumps(
        {"time": ping.time, "status": ping.status, "userid": ping.userid},
        separators=(",", ":"),
    )
    return (
        b"id: " + event_id(ping).encode("ascii")
        + b"\ndata: " + payload.encode("ascii") + b"\n\n"
    )


class Stream:
    """One open ``text/event-stream`` response, watching one or more users.

    ``finished`` is what the route returns to Klein: it never fires on its
    own; the hub's close fires it (so Klein ends the response) and Klein
    cancels it when the client goes away.
    """

    def __init__(
        self,
        request: IRequest,
        userids: tuple[str, ...],
        last_event_id: bytes | None = None,
    ) -> None:
        self.request = request
        self.userids = userids
        # What a reconnecting browser says it saw last (``Last-Event-ID``).
        self.last_event_id = last_event_id
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
        request.write(RETRY)

    def skip_resumed(self, ping: Ping) -> bool:
        """Whether the client already has ``ping``, by its ``Last-Event-ID``.

        A browser keeps only the last id it saw, so this spares at most one
        user's stored ping on reconnect; that ping counts as seen.
        """
        if self.last_event_id != event_id(ping).encode("ascii"):
            return False
        self.seen[ping.userid] = ping
        return True

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
