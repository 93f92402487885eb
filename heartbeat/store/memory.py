"""The in-process store and bus: one instance, nothing kept across restarts."""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from heartbeat.core.deadlines import Deadlines
from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.presence import MAX_DEVICES_PER_USER, Devices, Ping, Presence, UserState
from heartbeat.core.store_contract import BusListener


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
                 max_devices: int = MAX_DEVICES_PER_USER) -> None:
        self._clock = clock
        self._timeout = timeout
        self._hiding = hiding
        self._max_devices = max_devices
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
            room = devices.make_room(ping.clientid, self._max_devices)
            if room is not None:
                forgotten, gone = room
                self._deadlines.disarm((ping.userid, forgotten))
                self._forgot(ping.userid, forgotten)
                self._publish(gone)
        # Armed for a ping that hides too: its device stays connected.
        self._deadlines.arm_at((ping.userid, ping.clientid), deadline)
        changes = devices.ping(ping, self._hiding)
        if changes and changes[0].online:  # visible: the user's change, online, comes first
            self._online.add(ping.userid)
        else:  # hidden: its device went offline, perhaps the user with it
            self._count_offline(changes)
        self._publish(changes)

    def _apply_leave(self, userid: str, clientid: str) -> None:
        self._deadlines.disarm((userid, clientid))
        self._offline(userid, clientid)

    def _forgot(self, userid: str, clientid: str) -> None:
        """``clientid`` was forgotten to make room for a new device: nothing to
        do here; a store that keeps devices elsewhere forgets it there too."""

    def _devices(self, userid: str) -> Devices:
        devices = self._users.get(userid)
        if devices is None:
            devices = self._users[userid] = Devices(userid)
        return devices

    def get(self, userids: Iterable[str]) -> Deferred[dict[str, UserState | None]]:
        return succeed(self._states(userids))

    def _states(self, userids: Iterable[str]) -> dict[str, UserState | None]:
        states = {}
        for userid in userids:
            devices = self._users.get(userid)
            states[userid] = None if devices is None else devices.state()
        return states

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
        changes = devices.offline(clientid)
        self._count_offline(changes)
        self._publish(changes)

    def _count_offline(self, changes: tuple[Presence, ...]) -> None:
        """Count the user out when ``changes`` end with their going offline (SPEC §3)."""
        if changes and changes[-1].clientid is None:
            self._online.discard(changes[-1].userid)
            self.offline_transitions += 1

    def _publish(self, changes: tuple[Presence, ...]) -> None:
        if self.listener is None or not changes or changes[0].userid not in self._subscribed:
            return
        for change in changes:
            self.listener.deliver(change)

    def _timed_out(self, device: tuple[str, str]) -> None:
        self._offline(*device)
