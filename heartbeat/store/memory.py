"""The in-process store and bus: one instance, nothing kept across restarts.

Each transition's feed changes (SPEC §8) come from the same step that makes
it (:func:`~heartbeat.core.changes.ping_changes`), recorded in the store's
:class:`~heartbeat.store.changelog.ChangeLog`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from heartbeat.core.changes import (
    Page,
    Position,
    offline_changes,
    ping_changes,
    positions_of,
    room_changes,
)
from heartbeat.core.deadlines import Deadlines
from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.presence import MAX_DEVICES_PER_USER, Devices, Ping, Presence, UserState
from heartbeat.core.store_contract import BusListener
from heartbeat.store.changelog import DEFAULT_RETENTION, ChangeLog, now_ms

# Each published view's change-feed position, by clientid (None: the user's view).
Marks = Mapping[str | None, Position]
NO_MARKS: Marks = {}


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
                 *, changes_retention: float = DEFAULT_RETENTION,
                 feed: ChangeLog | None = None,
                 max_devices: int = MAX_DEVICES_PER_USER) -> None:
        self._clock = clock
        self._max_devices = max_devices
        # The change feed (SPEC §8); the SQLite store's continues its file's.
        self.feed = feed if feed is not None else ChangeLog(clock, changes_retention)
        self._timeout = timeout
        self._hiding = hiding
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
        return succeed(None)

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
