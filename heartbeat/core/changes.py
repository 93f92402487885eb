"""The change feed's values and rule (SPEC §8): what a change is, and where a reader is.

A :class:`Change` is one presence change as the app's backend reads it;
:func:`ping_changes` and :func:`offline_changes` are the one rule that turns
a user's transition into changes, used by the in-process stores in the same
step that makes the transition (the Redis scripts follow the same rule). A
:class:`Position` is a reader's place in the feed, an opaque string to
clients. :class:`ChangeFeed` is what a store offers readers of its feed.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Protocol

from twisted.internet.defer import Deferred

from heartbeat.core.errors import Refused
from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.presence import Devices, Ping, Presence

ONLINE = "online"
OFFLINE = "offline"
STATUS = "status"
DEVICE_ONLINE = "device_online"
DEVICE_OFFLINE = "device_offline"
ERASED = "erased"
CHANGE_TYPES = (ONLINE, OFFLINE, STATUS, DEVICE_ONLINE, DEVICE_OFFLINE, ERASED)


@dataclass(frozen=True, slots=True)
class Change:
    """One change of the feed.

    On a device change ``clientid`` names the device and ``time``,
    ``status`` and ``online`` are the device's; ``at`` is when it happened
    (epoch milliseconds). ``id`` is given by the store as it records the
    change (:meth:`stamped`), unique across the feed's lifetimes, so a
    receiver can drop repeats by it.
    """

    type: str
    userid: str
    time: int
    status: str
    online: bool
    at: int
    clientid: str | None = None
    id: str = ""

    def as_json(self) -> dict[str, object]:
        if self.type == ERASED:  # holds only the user id (SPEC §2, erasure)
            return {"id": self.id, "type": ERASED, "userid": self.userid, "at": self.at}
        body: dict[str, object] = {"id": self.id, "type": self.type, "userid": self.userid}
        if self.clientid is not None:
            body["clientid"] = self.clientid
        body.update(time=self.time, status=self.status, online=self.online, at=self.at)
        return body

    def stamped(self, position: Position) -> Change:
        """This change, recorded at ``position``: its id is the position's
        :attr:`~Position.change_id`, so a backend may resume from it."""
        return replace(self, id=position.change_id)


def erased_change(userid: str, at: int) -> Change:
    """The one change an erased user leaves in the feed."""
    return Change(ERASED, userid, 0, "", False, at)


def _user_change(before: Presence | None, after: Presence, at: int) -> Change | None:
    was_online = before is not None and before.online
    if after.online and not was_online:
        kind = ONLINE
    elif was_online and not after.online:
        kind = OFFLINE
    elif after.online and before is not None and before.status != after.status:
        kind = STATUS
    else:
        return None
    return Change(kind, after.userid, after.time, after.status, after.online, at)


def _device_change(before: Presence | None, after: Presence, at: int) -> Change | None:
    was_online = before is not None and before.online
    if after.online == was_online:
        return None
    kind = DEVICE_ONLINE if after.online else DEVICE_OFFLINE
    return Change(kind, after.userid, after.time, after.status, after.online, at, after.clientid)


def visibly_changed(before: Presence | None, after: Presence) -> bool:
    """Whether ``after`` (a user's or a device's view) is a change from ``before``."""
    if after.clientid is None:
        return _user_change(before, after, 0) is not None
    return _device_change(before, after, 0) is not None


def derive(before_user: Presence | None, before_device: Presence | None,
           after: tuple[Presence, ...], at: int) -> tuple[Change, ...]:
    """The changes of one transition, in the order its views were published.

    ``after`` is what :class:`~heartbeat.core.presence.Devices` published
    (the user's view and one device's, in either order); the ``before``
    views are the same user's and device's just before. A ping that leaves
    the user's online state and status, and its device's online state, as
    they were is no change; hidden statuses never reach ``after``.
    """
    changes = []
    for view in after:
        change = (_user_change(before_user, view, at) if view.clientid is None
                  else _device_change(before_device, view, at))
        if change is not None:
            changes.append(change)
    return tuple(changes)


def ping_changes(devices: Devices, ping: Ping, hiding: Hiding,
                 at: int) -> tuple[tuple[Presence, ...], tuple[Change, ...]]:
    """Apply ``ping`` to ``devices``: what watchers are told, and the feed's changes."""
    before_user, before_device = devices.user(), devices.devices.get(ping.clientid)
    after = devices.ping(ping, hiding)
    return after, derive(before_user, before_device, after, at)


def room_changes(devices: Devices, clientid: str, limit: int,
                 at: int) -> tuple[str, tuple[Presence, ...], tuple[Change, ...]] | None:
    """Before ``clientid`` pings: forget a device if it would be one too many
    (``MAX_DEVICES_PER_USER``); which, what watchers are told, and the feed's changes."""
    room = devices.make_room(clientid, limit)
    if room is None:
        return None
    forgotten, gone = room
    before = tuple(replace(view, online=True) for view in gone)
    return forgotten, gone, derive(None, before[0] if before else None, gone, at)


def offline_changes(devices: Devices, clientid: str,
                    at: int) -> tuple[tuple[Presence, ...], tuple[Change, ...]]:
    """Take ``clientid`` offline in ``devices``: what watchers are told, and the feed's changes."""
    before_user, before_device = devices.user(), devices.devices.get(clientid)
    after = devices.offline(clientid)
    return after, derive(before_user, before_device, after, at)


def positions_of(changes: tuple[Change, ...],
                 positions: list[Position]) -> dict[str | None, Position]:
    """Each recorded change's position by the view it is of (None: the user's;
    else its device's): a transition has at most one of each."""
    return {change.clientid: position for change, position in zip(changes, positions)}


class PositionGone(Refused):
    """A position the feed no longer keeps (or never made): read ``/status`` and go on from
    its cursor."""

    def __init__(self) -> None:
        super().__init__("this change-feed position is no longer kept (older than "
                         "CHANGES_RETENTION, or from another feed): read /status and continue "
                         "from its Heartbeat-Cursor")


_MARK = re.compile(r"[0-9]+(?:-[0-9]+)?")
# An epoch, then the separator: ``_`` in a position's text, ``-`` in a change's id.
_EPOCH = re.compile(r"([A-Za-z0-9]{1,32})[_-]")


@dataclass(frozen=True, slots=True)
class Position:
    """A place in one feed: just after the change it names.

    ``epoch`` names the feed's lifetime (a new database, a ``:memory:``
    process), so a position of another lifetime is gone, not misread;
    ``marks`` are the store's own (a sequence number; a stream id per
    partition). Text: ``<epoch>_<mark>[.<mark>…]``, URL-safe; the id of
    the change just before it is the same with ``-`` for ``_``
    (:attr:`change_id`), and :meth:`parse` takes either.
    """

    epoch: str
    marks: tuple[str, ...]

    @classmethod
    def at(cls, epoch: str, seq: int) -> Position:
        return cls(epoch, (str(seq),))

    @property
    def order(self) -> tuple[int, ...]:
        """Where it falls in its feed: two positions of one feed, with as many marks,
        compare by it (a sequence number; a stream id; a Cluster's stream id, then slot)."""
        return tuple(int(part) for mark in self.marks for part in mark.split("-"))

    @property
    def seq(self) -> int:
        """The sequence number of a one-mark position (the in-process stores')."""
        return int(self.marks[0].split("-")[0]) if len(self.marks) == 1 else -1

    def __str__(self) -> str:
        return self.epoch + "_" + ".".join(self.marks)

    @property
    def change_id(self) -> str:
        """The id of the change this position is just after (``Change.id``)."""
        return self.epoch + "-" + ".".join(self.marks)

    @classmethod
    def parse(cls, text: str) -> Position:
        """``text`` (a position, or a change's id) as a position; one that is
        neither is gone."""
        epoch = _EPOCH.match(text)
        if epoch is None:
            raise PositionGone()
        marks = tuple(text[epoch.end():].split("."))
        if not all(_MARK.fullmatch(m) for m in marks):
            raise PositionGone()
        return cls(epoch.group(1), marks)


def new_epoch() -> str:
    """A fresh feed lifetime's name."""
    return secrets.token_hex(4)


@dataclass(frozen=True, slots=True)
class Page:
    """Changes read from the feed, oldest first, and the position to read on from.

    ``positions`` has each change's own: just after it (an event's ``id``
    on the feed's stream).
    """

    changes: tuple[Change, ...]
    next: Position
    positions: tuple[Position, ...] = ()


class ChangeFeed(Protocol):
    """What a store offers the readers of its change feed (``/changes``, webhooks, streams)."""

    @property
    def changes_recorded(self) -> int:
        """Changes this process recorded (for ``/metrics``)."""

    def position(self) -> Deferred[Position]:
        """The feed's newest position: a state read after this fires includes
        every change up to it (``/status``'s ``Heartbeat-Cursor``)."""

    def changes(self, after: Position | None, limit: int,
                userids: Collection[str] | None = None) -> Deferred[Page]:
        """Up to ``limit`` changes after ``after`` (None: from the oldest kept),
        only of ``userids`` if given; fails with :class:`PositionGone` for a
        position no longer kept or not of this feed."""

    def wait(self, after: Position) -> Deferred[None]:
        """Fires once a change newer than ``after`` is recorded (at once if
        there is one); cancel it to stop waiting."""

    def delivered(self, name: str) -> Deferred[Position | None]:
        """Where the reader ``name`` (a webhook) durably got to, None if nowhere yet."""

    def set_delivered(self, name: str, position: Position, owner: str = "") -> Deferred[bool]:
        """Remember, durably, that ``name`` has everything up to ``position``;
        False (nothing stored) when ``owner`` no longer holds ``name``'s claim."""

    def claim(self, name: str, owner: str, seconds: float) -> Deferred[bool]:
        """Whether ``owner`` holds (takes, or keeps) the right to deliver ``name``
        for the next ``seconds``: with many instances on one store, one at a time,
        and a dead one's claim lapses. One process alone always holds it."""


class Waiters:
    """Long-poll readers waiting for the feed to pass a sequence number."""

    def __init__(self) -> None:
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def wait(self, after: int, newest: int) -> Deferred[None]:
        if newest > after:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        entry: tuple[int, Deferred[None]]

        def cancel(_: Deferred[None]) -> None:
            if entry in self._waiting:
                self._waiting.remove(entry)

        d = Deferred(cancel)
        entry = (after, d)
        self._waiting.append(entry)
        return d

    def passed(self, newest: int) -> None:
        """The feed's newest sequence number is now ``newest``."""
        due = [entry for entry in self._waiting if entry[0] < newest]
        if not due:
            return
        self._waiting = [entry for entry in self._waiting if entry[0] >= newest]
        for _, d in due:
            d.callback(None)
