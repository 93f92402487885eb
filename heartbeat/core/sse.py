"""Server-Sent Events framing: each event's bytes, built once for every stream."""

from __future__ import annotations

import json
from hashlib import blake2b

from heartbeat.core.presence import Presence

# A comment line, with no blank line after it: a blank line ends an event
# block, and some clients (httpx-sse) hand every block out as an event, an
# empty one for a block that held only a comment.
KEEPALIVE = b":\n"
# How long a browser waits before reconnecting a dropped stream (ms); sent
# first on every stream, so a restart costs clients seconds, not the
# browser's own default. A field line only: it joins the first event's
# block rather than making an event of its own.
RETRY_MS = 2000
RETRY = b"retry: %d\n" % RETRY_MS


def event_id(change: Presence) -> str:
    """The ``id:`` of ``change``'s event: ``<time>-<hash of what else it says>``.

    A fingerprint of the change alone, never of the stream, so one frame
    serves every subscriber; ASCII with no line breaks whatever the user id
    holds. A browser hands the last one back as ``Last-Event-ID`` on
    reconnect. An online user's id is what it was before presence existed;
    offline and device views hash more, so a client that saw a ping's event
    but not the offline event after it is sent the offline one.
    """
    key = f"{change.userid}\0{change.status}"
    if not change.online:
        key += "\0offline"
    if change.clientid is not None:
        key += f"\0client\0{change.clientid}"
    if change.erased:
        key += "\0erased"
    digest = blake2b(key.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
    return f"{change.time}-{digest}"


def encode_event(change: Presence) -> bytes:
    """One event's bytes, built once and written to every subscriber.

    ``json.dumps`` escapes every control character and non-ASCII code point,
    so no user id or status can smuggle a line break into the frame.
    """
    payload = json.dumps(change.as_event(), separators=(",", ":"))
    return (
        b"id: " + event_id(change).encode("ascii")
        + b"\ndata: " + payload.encode("ascii") + b"\n\n"
    )


class Event:
    """A change's event, framed once for every subscriber.

    Streams write ``chunk`` (the frame as an HTTP/1.1 chunk) to their
    connection directly, so fanning out costs no per-subscriber framing.
    """

    __slots__ = ("change", "frame", "chunk")

    def __init__(self, change: Presence) -> None:
        self.change = change
        self.frame = encode_event(change)
        self.chunk = _chunk(self.frame)


def _chunk(frame: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(frame), frame)


KEEPALIVE_CHUNK = _chunk(KEEPALIVE)


def retry_frame(retry_ms: int) -> tuple[bytes, bytes]:
    """A ``retry:`` field alone, and as a chunk: how long the client waits to reconnect."""
    frame = b"retry: %d\n" % retry_ms
    return frame, _chunk(frame)


# What an event stream's response says of itself (a HEAD gets them too).
STREAM_HEADERS = (
    (b"Content-Type", b"text/event-stream"),
    (b"Cache-Control", b"no-cache"),
    (b"X-Accel-Buffering", b"no"),
)
# The stream's first bytes after its headers, as a chunk.
RETRY_CHUNK = _chunk(RETRY)
