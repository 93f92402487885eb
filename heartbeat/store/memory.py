"""The in-process store and bus: one instance, nothing kept across restarts.

Each transition's feed changes (SPEC §8) come from the same step that makes
it (:func:`~heartbeat.core.changes.ping_changes`), recorded in the store's
:class:`~heartbeat.store.changelog.ChangeLog`.
"""

from __future__ import annotations

import base64
import binascii
import heapq
from collections.abc import Collection, Iterable, Mapping, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from heartbeat.core.changes import (
    Page,
    Position,
    offline_changes,
    ping_changes,
    positions_of,
    room_changes,
)
from heartbeat.core.deadlines import Deadlines
from heartbeat.core.errors import BadInput
from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.presence import (
    MAX_DEVICES_PER_USER,
    Devices,
    Ping,
    Presence,
    UserState,
    erased,
)
from heartbeat.core.store_contract import BusListener
from heartbeat.store.changelog import DEFAULT_RETENTION, ChangeLog, now_ms

# Each published view's change-feed position, by clientid (None: the user's view).
Marks = Mapping[str | None, Position]
NO_MARKS: Marks = {}

# Seconds between sweeps for devices past ``DEVICE_RETENTION``, at most and at least.
PRUNE_INTERVAL = (1.0, 3600.0)


def prune_interval(retention: float) -> float:
    """How often to look for forgotten devices: a device goes at most a
    quarter of the retention (an hour at most) after it is due."""
    low, high = PRUNE_INTERVAL
    return min(max(retention / 4, low), high)


def page_token(userid: str) -> str:
    """The ``next`` of a page that ended with ``userid``: opaque, URL-safe."""
    return base64.urlsafe_b64encode(userid.encode("utf-8", "surrogatepass")).decode("ascii")


def page_after(token: str | None) -> str | None:
    """The user id a :func:`page_token` names, or a 400."""
    if token is None:
        return None
    try:
        raw = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True)
        return raw.decode("utf-8", "surrogatepass")
    except (ValueError, binascii.Error, UnicodeError):
        raise BadInput("after must be the next token of the previous page") from None


class MemoryStore:
    """The in-process store and bus: one instance, nothing kept across restarts.

    Deadlines are one :class:`~heartbeat.core.deadlines.Deadlines` wheel,
    whose one delayed call is set for the earliest slot in use, so an idle
    store wakes no more than once a second and not at all with nobody online.
    """

    listener: BusListener | None = None
    available = True
    # Presence is all here from the start (``/readyz``; the SQLite store loads it).
    loaded = True
    kind = "memory"

    def __init__(self, clock: IReactorTime, timeout: float, hiding: Hiding = Hiding(),
                 retention: float | None = None, *,
                 changes_retention: float = DEFAULT_RETENTION,
                 feed: ChangeLog | None = None,
                 max_devices: int = MAX_DEVICES_PER_USER) -> None:
        self._clock = clock
        self._max_devices = max_devices
        # The change feed (SPEC §8); the SQLite store's continues its file's.
        self.feed = feed if feed is not None else ChangeLog(clock, changes_retention)
        self._timeout = timeout
        self._hiding = hiding
        # DEVICE_RETENTION: None keeps devices for ever (tests that do not prune).
        self._retention = retention
        self._prune_call: IDelayedCall | None = None
        if retention is not None:
            self._prune_call = clock.callLater(prune_interval(retention), self._prune)
        self._users: dict[str, Devices] = {}
        self._subscribed: set[str] = set()
        self._deadlines: Deadlines[tuple[str, str]] = Deadlines(clock, self._timed_out)
        self._online: set[str] = set()
        self.reconnects: dict[str, int] = {}
        self.offline_transitions = 0

    def online_users(self) -> int | None:
        return len(self._online)

    def ping(self, ping: Ping) -> Deferred[None]:
        self._apply_ping(ping, self._clock.seconds() + self._timeout)
        return succeed(None)

    def leave(self, userid: str, clientid: str) -> Deferred[None]:
        self._apply_leave(userid, clientid)
        return succeed(None)

    def rearm(self, devices: Sequence[tuple[str, str]], after: float) -> Deferred[None]:
        self._apply_rearm(devices, self._clock.seconds() + after)
        return succeed(None)

    def _apply_rearm(self, devices: Sequence[tuple[str, str]], deadline: float) -> None:
        """Move the deadline of each device that has one (it is online, or hides)."""
        deadlines = self._deadlines
        for device in devices:
            if device in deadlines:
                deadlines.arm_at(device, deadline)

    def _apply_ping(self, ping: Ping, deadline: float) -> None:
        """Record ``ping``, its device due offline at ``deadline``, and publish it."""
        devices = self._devices(ping.userid)
        if not self._hiding.hides(ping.status):
            room = room_changes(devices, ping.clientid, self._max_devices, now_ms(self._clock))
            if room is not None:
                forgotten, gone, changes = room
                self._forgotten(ping.userid, forgotten)
                self._publish(gone, positions_of(changes, self.feed.append(changes)))
        presences, changes = ping_changes(devices, ping, self._hiding, now_ms(self._clock))
        marks = positions_of(changes, self.feed.append(changes))
        self._pinged(ping, deadline, presences, marks)

    def _forgotten(self, userid: str, clientid: str) -> None:
        """``clientid`` was forgotten to make room for a new device: its deadline goes."""
        self._deadlines.disarm((userid, clientid))

    def _pinged(self, ping: Ping, deadline: float, presences: tuple[Presence, ...],
                marks: Marks = NO_MARKS) -> None:
        """What a stored ping does besides its changes: its deadline, counts, watchers."""
        # Armed for a ping that hides too: its device stays connected.
        self._deadlines.arm_at((ping.userid, ping.clientid), deadline)
        if presences and presences[0].online:  # visible: the user's change, online, comes first
            self._online.add(ping.userid)
        else:  # hidden: its device went offline, perhaps the user with it
            self._count_offline(presences)
        self._publish(presences, marks)

    def _apply_leave(self, userid: str, clientid: str) -> None:
        self._deadlines.disarm((userid, clientid))
        self._offline(userid, clientid)

    def _devices(self, userid: str) -> Devices:
        devices = self._users.get(userid)
        if devices is None:
            devices = self._users[userid] = Devices(userid)
        return devices

    def restore(self, latest: Ping, devices: Iterable[tuple[Presence, float]]) -> None:
        """Put back a user kept elsewhere (a database), publishing nothing.

        ``devices`` are the user's devices as last stored, each with its
        deadline; an online one whose deadline has passed goes offline at
        the first sweep, by the same rules as any other timeout.
        """
        user = self._devices(latest.userid)
        user.latest = latest
        for device, deadline in devices:
            assert device.clientid is not None
            user.put(device)
            if device.online:
                self._online.add(latest.userid)
                self._deadlines.arm_at((latest.userid, device.clientid), deadline)

    def get(self, userids: Iterable[str]) -> Deferred[dict[str, UserState | None]]:
        return succeed(self._states(userids))

    def _states(self, userids: Iterable[str]) -> dict[str, UserState | None]:
        states = {}
        for userid in userids:
            devices = self._users.get(userid)
            states[userid] = None if devices is None else devices.state()
        return states

    # The change feed (ChangeFeed): the log's.

    @property
    def changes_recorded(self) -> int:
        return self.feed.changes_recorded

    def position(self) -> Deferred[Position]:
        return self.feed.position()

    def changes(self, after: Position | None, limit: int,
                userids: Collection[str] | None = None) -> Deferred[Page]:
        return self.feed.changes(after, limit, userids)

    def wait(self, after: Position) -> Deferred[None]:
        return self.feed.wait(after)

    def delivered(self, name: str) -> Deferred[Position | None]:
        return self.feed.delivered(name)

    def set_delivered(self, name: str, position: Position, owner: str = "") -> Deferred[bool]:
        return self.feed.set_delivered(name, position, owner)

    def claim(self, name: str, owner: str, seconds: float) -> Deferred[bool]:
        return self.feed.claim(name, owner, seconds)

    def subscribe(self, userid: str) -> Deferred[None]:
        self._subscribed.add(userid)
        return succeed(None)

    def unsubscribe(self, userid: str) -> Deferred[None]:
        self._subscribed.discard(userid)
        return succeed(None)

    def close(self) -> Deferred[None]:
        self._deadlines.stop()
        if self._prune_call is not None and self._prune_call.active():
            self._prune_call.cancel()
        self._prune_call = None
        return succeed(None)

    def online_page(self, after: str | None, limit: int) -> Deferred[tuple[list[str], str | None]]:
        # In user-id order, so a page picks up where the last ended.
        start = page_after(after)
        online = self._online if start is None else (u for u in self._online if u > start)
        page = heapq.nsmallest(limit + 1, online)
        if len(page) <= limit:
            return succeed((page, None))
        return succeed((page[:limit], page_token(page[limit - 1])))

    def erase(self, userid: str) -> Deferred[None]:
        self._apply_erase(userid)
        return succeed(None)

    def disconnect(self, userid: str) -> Deferred[None]:
        if self.listener is not None:
            self.listener.disconnect(userid)
        return succeed(None)

    def _apply_erase(self, userid: str) -> None:
        """Forget the user, their feed entries too, but for the one erased change."""
        self.feed.erase(userid, now_ms(self._clock))
        self._erased(userid, {None: Position.at(self.feed.epoch, self.feed.newest)})

    def _erased(self, userid: str, marks: Marks) -> None:
        """What an erasure does besides its feed: memory, deadlines, watchers."""
        devices = self._users.pop(userid, None)
        self._online.discard(userid)
        for clientid in () if devices is None else devices.devices:
            self._deadlines.disarm((userid, clientid))
        # A device that only ever pinged hidden has a deadline and no entry:
        # it fires into no user (nothing happens), and is never on disk.
        self._publish((erased(userid),), marks)

    def _prune(self) -> None:
        """Forget the devices offline for longer than ``DEVICE_RETENTION``."""
        assert self._retention is not None
        self._prune_call = None
        cutoff = self._clock.seconds() - self._retention
        self._forget(self._stale(cutoff), cutoff)
        self._prune_call = self._clock.callLater(prune_interval(self._retention), self._prune)

    def _stale(self, cutoff: float) -> list[tuple[str, str]]:
        """The devices offline whose last ping was before ``cutoff``."""
        return [
            (userid, clientid)
            for userid, devices in self._users.items()
            for clientid, device in devices.devices.items()
            if not device.online and device.time < cutoff
        ]

    def _forget(self, stale: Iterable[tuple[str, str]], cutoff: float) -> None:
        for userid, clientid in stale:
            devices = self._users.get(userid)
            if devices is not None:
                device = devices.devices.get(clientid)
                if device is not None and not device.online and device.time < cutoff:
                    del devices.devices[clientid]

    def _offline(self, userid: str, clientid: str) -> None:
        devices = self._users.get(userid)
        if devices is None:
            return
        presences, changes = offline_changes(devices, clientid, now_ms(self._clock))
        marks = positions_of(changes, self.feed.append(changes))
        self._went_offline(presences, marks)

    def _went_offline(self, presences: tuple[Presence, ...], marks: Marks = NO_MARKS) -> None:
        self._count_offline(presences)
        self._publish(presences, marks)

    def _count_offline(self, changes: tuple[Presence, ...]) -> None:
        """Count the user out when ``changes`` end with their going offline (SPEC §3)."""
        if changes and changes[-1].clientid is None:
            self._online.discard(changes[-1].userid)
            self.offline_transitions += 1

    def _publish(self, changes: tuple[Presence, ...], marks: Marks = NO_MARKS) -> None:
        """Hand ``changes`` to the hub, each view's feed position with it if
        it was recorded (``marks``, by clientid)."""
        if self.listener is None or not changes or changes[0].userid not in self._subscribed:
            return
        for change in changes:
            self.listener.deliver(change, marks.get(change.clientid))

    def _timed_out(self, device: tuple[str, str]) -> None:
        self._offline(*device)
