"""The in-process store and bus: one instance, nothing kept across restarts."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from heartbeat.core.feed import Listener
from heartbeat.core.hidden import Hiding
from heartbeat.core.presence import Devices, Ping, Presence, UserState


class DeadlineWheel:
    """When each online device times out: a timer wheel of one-second slots.

    A device sits in the slot of the whole second at or after its deadline;
    a ping moves it to a later slot (O(1), plus O(log slots) for a slot
    not yet in use), so there is no timer per device and no stale entry
    left behind. The slots in use are a heap; with one timeout for all,
    they number at most the timeout in seconds, plus one.
    """

    def __init__(self) -> None:
        self._slots: dict[int, dict[tuple[str, str], None]] = {}
        self._order: list[int] = []
        self._slot_of: dict[tuple[str, str], int] = {}

    def arm(self, device: tuple[str, str], deadline: float) -> None:
        slot = math.ceil(deadline)
        old = self._slot_of.get(device)
        if old == slot:
            return
        if old is not None:
            del self._slots[old][device]
        self._slot_of[device] = slot
        devices = self._slots.get(slot)
        if devices is None:
            devices = self._slots[slot] = {}
            heapq.heappush(self._order, slot)
        devices[device] = None

    def disarm(self, device: tuple[str, str]) -> None:
        slot = self._slot_of.pop(device, None)
        if slot is not None:
            del self._slots[slot][device]

    def next_slot(self) -> int | None:
        """The earliest slot that may hold a device (it may have been emptied)."""
        return self._order[0] if self._order else None

    def due(self, now: float) -> list[tuple[str, str]]:
        """Take every device whose slot has come, in deadline order."""
        due: list[tuple[str, str]] = []
        while self._order and self._order[0] <= now:
            for device in self._slots.pop(heapq.heappop(self._order)):
                del self._slot_of[device]
                due.append(device)
        return due

    def __len__(self) -> int:
        return len(self._slot_of)


class MemoryStore:
    """The in-process store and bus: one instance, nothing kept across restarts.

    Deadlines are swept by one delayed call, set for the earliest slot in
    use, so an idle store wakes no more than once a second and not at all
    with nobody online.
    """

    listener: Listener | None = None
    available = True
    kind = "memory"

    def __init__(self, clock: IReactorTime, timeout: float, hiding: Hiding = Hiding()) -> None:
        self._clock = clock
        self._timeout = timeout
        self._hiding = hiding
        self._users: dict[str, Devices] = {}
        self._subscribed: set[str] = set()
        self._deadlines = DeadlineWheel()
        self._sweep_call: IDelayedCall | None = None
        self._online: set[str] = set()
        self.reconnects: dict[str, int] = {}
        self.offline_transitions = 0

    def online_users(self) -> int | None:
        return len(self._online)

    def ping(self, ping: Ping) -> Deferred[None]:
        devices = self._users.get(ping.userid)
        if devices is None:
            devices = self._users[ping.userid] = Devices(ping.userid)
        # Armed for a ping that hides too: its device stays connected.
        self._deadlines.arm((ping.userid, ping.clientid), self._clock.seconds() + self._timeout)
        self._schedule()
        changes = devices.ping(ping, self._hiding)
        if changes and changes[0].online:  # visible: the user's change, online, comes first
            self._online.add(ping.userid)
        else:  # hidden: its device went offline, perhaps the user with it
            self._count_offline(changes)
        self._publish(changes)
        return succeed(None)

    def leave(self, userid: str, clientid: str) -> Deferred[None]:
        self._deadlines.disarm((userid, clientid))
        self._offline(userid, clientid)
        return succeed(None)

    def get(self, userids: Iterable[str]) -> Deferred[dict[str, UserState | None]]:
        states = {}
        for userid in userids:
            devices = self._users.get(userid)
            states[userid] = None if devices is None else devices.state()
        return succeed(states)

    def subscribe(self, userid: str) -> Deferred[None]:
        self._subscribed.add(userid)
        return succeed(None)

    def unsubscribe(self, userid: str) -> Deferred[None]:
        self._subscribed.discard(userid)
        return succeed(None)

    def close(self) -> Deferred[None]:
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None
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

    def _schedule(self) -> None:
        if self._sweep_call is not None:
            return
        slot = self._deadlines.next_slot()
        if slot is not None:
            delay = max(0.0, slot - self._clock.seconds())
            self._sweep_call = self._clock.callLater(delay, self._sweep)

    def _sweep(self) -> None:
        self._sweep_call = None
        for userid, clientid in self._deadlines.due(self._clock.seconds()):
            self._offline(userid, clientid)
        self._schedule()
