"""Presence values: what a device sends, and what watchers are told (SPEC §3).

A :class:`Ping` is one device's report. A :class:`Presence` is one change as a
watcher sees it: the user's (``clientid`` None: their latest ping, online
while any device is) or one device's. :class:`UserState` is what a store
reads back: the user's presence and each device's. :class:`Devices` holds
the rules that turn pings, leaves and timeouts into changes, for the stores
that keep state in this process; the Redis scripts follow the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from heartbeat.core.hidden_statuses import Hiding


@dataclass(frozen=True, slots=True)
class Ping:
    """One ping, as a device sent it: the store's input.

    ``clientid`` is the device; a claim or token without one is the device ``""``.
    """

    userid: str
    time: int
    status: str
    clientid: str = ""


@dataclass(frozen=True, slots=True)
class Presence:
    """One change as watchers see it, and the JSON object of its event.

    ``clientid`` None is the user's view (device streams never get it); a
    string is that device's view (only its device streams get it). Frozen
    so the same object can be shared by the store, the hub and every stream
    that saw it; slots because many streams keep one per watched user.
    """

    userid: str
    time: int
    status: str
    online: bool = True
    clientid: str | None = None
    # The user was erased (``DELETE /users/{id}``): their last event, which
    # says nothing of them but their id.
    erased: bool = False

    def as_status(self) -> dict[str, object]:
        """The ``/status`` shape of this view (no ``userid``)."""
        return {"time": self.time, "status": self.status, "online": self.online}

    def as_event(self) -> dict[str, object]:
        """The event's JSON object: on streams and, as it is, on the bus."""
        if self.erased:
            return {"userid": self.userid, "online": False, "erased": True}
        event: dict[str, object] = {
            "time": self.time, "status": self.status, "userid": self.userid, "online": self.online,
        }
        if self.clientid is not None:
            event["clientid"] = self.clientid
        return event


@dataclass(frozen=True, slots=True)
class UserState:
    """A user's stored presence and their devices', as a store reads it."""

    user: Presence
    devices: Mapping[str, Presence] = field(default_factory=dict)

    def view(self, clientid: str | None) -> Presence | None:
        """The user's view (``clientid`` None), or that device's if it ever pinged."""
        return self.user if clientid is None else self.devices.get(clientid)

    def as_status(self) -> dict[str, object]:
        """``/status``'s object for this user, each device included."""
        body = self.user.as_status()
        body["devices"] = {clientid: device.as_status() for clientid, device in self.devices.items()}
        return body


# SPEC §3's default for MAX_DEVICES_PER_USER.
MAX_DEVICES_PER_USER = 100


class Devices:
    """One user's devices and the changes each ping, leave or timeout makes.

    Mutable, for the in-process stores; the user's ``time`` and ``status``
    are those of the latest visible ping, whichever device sent it. Only
    what watchers may see is kept: a ping that hides (``HIDDEN_STATUSES``)
    leaves no trace here, its device shows offline with its last visible
    ping, and the store keeps the device's deadline armed as for any ping.

    What a device costs does not grow with the user's other devices (SPEC
    §3): the online ones are counted, not searched for, and ``devices`` is
    kept in the order they last pinged, so the least recently seen is first.
    """

    __slots__ = ("userid", "latest", "devices", "_online")

    def __init__(self, userid: str) -> None:
        self.userid = userid
        self.latest: Ping | None = None
        self.devices: dict[str, Presence] = {}
        self._online = 0

    @property
    def online(self) -> bool:
        return self._online > 0

    def user(self) -> Presence | None:
        latest = self.latest
        if latest is None:
            return None
        return Presence(self.userid, latest.time, latest.status, self._online > 0)

    def state(self) -> UserState | None:
        user = self.user()
        return None if user is None else UserState(user, dict(self.devices))

    def copy(self) -> Devices:
        """Another Devices with the same state, to work a batch out on before it commits."""
        other = Devices(self.userid)
        other.latest = self.latest
        other.devices = dict(self.devices)
        other._online = self._online
        return other

    def put(self, device: Presence) -> None:
        """Add or replace a device as stored, publishing nothing (a restore)."""
        assert device.clientid is not None
        self.forget(device.clientid)
        self.devices[device.clientid] = device
        self._online += device.online

    def forget(self, clientid: str) -> Presence | None:
        """Drop ``clientid`` as if it never pinged: what it was, if anything."""
        device = self.devices.pop(clientid, None)
        if device is not None:
            self._online -= device.online
        return device

    def ping(self, ping: Ping, hiding: Hiding) -> tuple[Presence, ...]:
        """Record ``ping``: the user's change, then the device's.

        A ping that hides is, to watchers, its device going offline: what
        :meth:`offline` says (nothing if it already was), so the user's
        offline event comes once, when their last visible device hides,
        and hidden pings after it send nothing.
        """
        if hiding.hides(ping.status):
            return self.offline(ping.clientid)
        self.latest = ping
        device = Presence(ping.userid, ping.time, ping.status, True, ping.clientid)
        self.put(device)  # moved last: the most recently seen
        return (Presence(ping.userid, ping.time, ping.status, True), device)

    def make_room(self, clientid: str, limit: int) -> tuple[str, tuple[Presence, ...]] | None:
        """Before ``clientid`` pings: forget the least recently seen device if it
        would be one too many (``MAX_DEVICES_PER_USER``), an offline one first.

        Returns the device forgotten and its offline change, if it was online
        (never the user's: the ping about to come keeps them online), or None.
        Only a new device at the limit searches, so a ping of a known device
        costs a lookup.
        """
        if clientid in self.devices or len(self.devices) < limit:
            return None
        return self.forget_oldest()

    def forget_oldest(self) -> tuple[str, tuple[Presence, ...]]:
        """Forget the least recently seen device, an offline one if there is one.

        Returns it and its offline change, if it was online.
        """
        if self._online < len(self.devices):
            victim = next(c for c, device in self.devices.items() if not device.online)
        else:
            victim = next(iter(self.devices))
        device = self.forget(victim)
        assert device is not None
        return victim, ((replace(device, online=False),) if device.online else ())

    def offline(self, clientid: str) -> tuple[Presence, ...]:
        """``clientid`` is offline: its change, then the user's if it was the last.

        Nothing for a device that was not online, so a leave after a
        timeout (or a second sweep) changes nothing.
        """
        device = self.devices.get(clientid)
        if device is None or not device.online:
            return ()
        gone = self.devices[clientid] = replace(device, online=False)
        self._online -= 1
        if self._online:
            return (gone,)
        user = self.user()
        return (gone,) if user is None else (gone, user)


def erased(userid: str) -> Presence:
    """The change that tells watchers ``userid`` was erased."""
    return Presence(userid, 0, "", False, erased=True)
