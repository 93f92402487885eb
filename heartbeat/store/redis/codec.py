"""The wire format of presence in Redis: bus messages, stored rows, deadline members.

What the Lua writes and what other services (Beep's, the Go predecessor)
read or wrote; every instance of every version must read it alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from heartbeat.core import fast_json
from heartbeat.core.changes import Position, PositionGone
from heartbeat.core.presence import Ping, Presence, UserState, erased


def ping_args(ping: Ping, member: str, hides: bool) -> tuple[object, ...]:
    """One ping's arguments to ``ping.lua``; a ping that hides has no message."""
    message = "" if hides else ping_message(ping)
    return (ping.userid, ping.time, ping.status, ping.clientid, member, message)


def ping_message(ping: Ping) -> str:
    """What a ping publishes: its device's event, which is also the user's.

    A ping makes the user's ``time`` and ``status`` its own and the user
    online, so one message says both; :func:`from_message` reads it back
    as the two changes.
    """
    device = Presence(ping.userid, ping.time, ping.status, True, ping.clientid)
    return fast_json.dumps(device.as_event()).decode("ascii")


def erased_message(userid: str) -> str:
    """What an erasure publishes on the user's channel: their ``erased`` event."""
    return json.dumps(erased(userid).as_event(), separators=(",", ":"))


def disconnect_message(userid: str) -> str:
    """What the control channel carries to end ``userid``'s own streams everywhere."""
    return json.dumps({"disconnect": userid}, separators=(",", ":"))


def from_control(text: object) -> str | None:
    """The user a control message names to disconnect, if it is one."""
    if not isinstance(text, str):
        return None
    try:
        message = json.loads(text)
    except ValueError:
        return None
    userid = message.get("disconnect") if isinstance(message, dict) else None
    return userid if isinstance(userid, str) and userid else None


def deadline_member(userid: str, clientid: str) -> str:
    """A device's member in its deadline partition: both ids, unambiguously."""
    return fast_json.dumps([userid, clientid]).decode("ascii")


def from_member(member: str) -> tuple[str, str] | None:
    try:
        userid, clientid = json.loads(member)
    except (ValueError, TypeError):
        return None
    if not (isinstance(userid, str) and isinstance(clientid, str)):
        return None
    return userid, clientid


# A message's changes, and the feed positions it gives them by view (None: the
# user's, else its device's), or None when it says nothing of the feed.
Message = tuple[tuple[Presence, ...], dict[str | None, Position] | None]


def from_message(userid: str, text: str,
                 position: Callable[[str], Position] = Position.parse) -> Message:
    """The changes a message on ``userid``'s channel carries, and their positions.

    A JSON object with ``time`` and ``status`` (and optionally ``online``,
    default true) is the user's change; with a string ``clientid`` too, the
    device's, and when it is online (a ping) the user's as well. Its
    ``feed`` object (``lua/feed.lua``'s ``with_feed``) gives the position of
    each view that changed, ``user`` and ``device``, as ``position`` reads
    them (a Cluster's scripts give only the entry's id); a message without
    it (another service's) says nothing of the feed. The Go service's
    ``"time status"`` text is still read, as the user's change. Anything
    else is ignored.
    """
    if not text.startswith("{"):
        stamp, _, text_status = text.partition(" ")
        ping = _ping(userid, stamp, text_status)
        return () if ping is None else (Presence(userid, ping.time, ping.status),), None
    try:
        event = fast_json.loads(text)
    except ValueError:
        return (), None
    if not isinstance(event, dict):
        return (), None
    if event.get("erased") is True:
        return (erased(userid),), _positions(event.get("feed"), None, position)
    time, status, online = event.get("time"), event.get("status"), event.get("online", True)
    if (type(time) is not int or time < 0 or not isinstance(status, str) or not status
            or not isinstance(online, bool)):
        return (), None
    clientid = event.get("clientid")
    positions = _positions(event.get("feed"), clientid, position)
    user = Presence(userid, time, status, online)
    if not isinstance(clientid, str):
        return (user,), positions
    device = Presence(userid, time, status, online, clientid)
    return ((user, device) if online else (device,)), positions


def _positions(feed: object, clientid: object,
               position: Callable[[str], Position]) -> dict[str | None, Position] | None:
    if not isinstance(feed, dict):
        return None
    positions: dict[str | None, Position] = {}
    for view, key in ((None, "user"), (clientid, "device")):
        text = feed.get(key)
        if isinstance(text, str) and (view is None or isinstance(view, str)):
            try:
                positions[view] = position(text)
            except PositionGone:
                return None  # not heartbeat's (or no epoch known yet): as if it said nothing
    return positions


def from_row(userid: str, row: Sequence[Any]) -> UserState | None:
    """A user's state from ``read_many.lua``'s row: None if they never pinged."""
    time, status, fields, online = row
    latest = _ping(userid, time, status)
    if latest is None:
        return None
    up = set(online)
    devices = {}
    for clientid, value in zip(fields[::2], fields[1::2]):
        ping = _ping(userid, *value.partition(" ")[::2])
        if ping is not None:
            devices[clientid] = Presence(userid, ping.time, ping.status, clientid in up, clientid)
    return UserState(Presence(userid, latest.time, latest.status, bool(up)), devices)


def _ping(userid: str, time: str | None, status: str | None) -> Ping | None:
    # Anything not written by heartbeat (or its Go predecessor) reads as no ping.
    if not time or not status or not (time.isascii() and time.isdigit()):
        return None
    return Ping(userid, int(time), status)
