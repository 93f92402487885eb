"""Server-Sent Events framing: each event's bytes, built once for every stream.

Only SSE: how those bytes travel (HTTP/1.1 chunks, or none) is the web layer's.
"""

from __future__ import annotations

from hashlib import blake2b

from heartbeat.core import fast_json
from heartbeat.core.changes import Position
from heartbeat.core.presence import Presence

# A comment line, with no blank line after it: a blank line ends an event
# block, and some clients (httpx-sse) hand every block out as an event, an
# empty one for a block that held only a comment.
KEEPALIVE_BYTES = b":\n"
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


def encode_event(change: Presence, eid: str | None = None) -> bytes:
    """One event's bytes, built once and written to every subscriber.

    JSON escapes every control character and non-ASCII code point,
    so no user id or status can smuggle a line break into the frame.
    ``eid`` replaces the change's own id (a change-feed position, on a
    ``changes=only`` stream).
    """
    return encode_frame(change.as_event(), event_id(change) if eid is None else eid)


def encode_frame(body: object, eid: str, name: str | None = None) -> bytes:
    """An event of ``body`` (JSON, ASCII-escaped; events and statuses, no floats) with id
    ``eid`` and, if given, an ``event:`` ``name`` (``snapshot``, ``batch``)."""
    head = b"" if name is None else b"event: " + name.encode("ascii") + b"\n"
    return head + b"id: " + eid.encode("ascii") + b"\ndata: " + fast_json.dumps(body) + b"\n\n"


class Frame:
    """Bytes a stream sends (an event, a comment), built once for every stream.

    ``wire`` is those bytes as a stream's transport frames them for its
    protocol, made by the first transport that needs it and reused by the
    rest, so fanning out costs no per-subscriber framing.
    """

    __slots__ = ("data", "wire")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.wire: bytes | None = None


class Event(Frame):
    """A change's event, framed once for every subscriber."""

    __slots__ = ("change", "position")

    def __init__(self, change: Presence, position: Position | None = None) -> None:
        super().__init__(encode_event(change, None if position is None else str(position)))
        self.change = change
        # A change-feed position (its text is the event's id), on the events
        # of ``changes=only`` streams; None on every other stream's.
        self.position = position


KEEPALIVE = Frame(KEEPALIVE_BYTES)
