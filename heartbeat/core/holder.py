"""Presence streams (SPEC §3): an open stream is its device's heartbeat.

A presence stream (``presence=<status>``) holds its device online without
``POST /ping``, so a background tab whose timers the browser throttles
stays online. The store keeps presence as before, by each device's
deadline; the instance holding the streams only moves those deadlines:

- a stream opening is a ping of its device with that status (the same
  event for watchers, ``time`` = when it opened);
- while any of a device's presence streams here is open, its deadline is
  renewed well before it falls due, many devices in one store call;
- when the last ends, the deadline is moved to ``LEAVE_GRACE`` from now,
  so the device goes offline then unless a ping or a new presence stream
  (on any instance) moves it again, and the store's own exactly-once sweep
  takes it offline otherwise. No transition is made here, so none can be
  made twice; an instance that dies stops renewing, and its devices go
  offline by the ordinary timeout.

A renewal moves only the deadline of a device that is online: after
``POST /leave`` it is offline at once and its open stream no longer holds
it. The same device may hold a stream on two instances (two tabs behind a
load balancer): one ending moves the deadline to the grace, so the other
renews within half the grace, before the sweep can take the device offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from heartbeat.core.deadlines import Deadlines
from heartbeat.core.presence import Ping

log = Logger()

Device = tuple[str, str]

# The shortest time between two renewals of a device: with a tiny LEAVE_GRACE the
# renewals follow the timeout, not the grace.
MIN_RENEWAL = 1.0
# Renewals are timed by a wheel of this many slots per renewal period: a device is
# renewed between 4/5 and the whole of the longest wait allowed.
_SLOTS_PER_PERIOD = 4


class Holding(Protocol):
    """What the holder needs of a store."""

    def ping(self, ping: Ping) -> Deferred[None]: ...

    def rearm(self, devices: Sequence[Device], after: float) -> Deferred[None]:
        """Each of ``devices`` that is online is due offline ``after`` seconds
        from now; nothing is published and nothing else changes."""


def renewal_period(timeout: float, grace: float) -> float:
    """The longest a held device may wait for its renewal.

    A third of ``PRESENCE_TIMEOUT`` (so one late or failed renewal is not
    yet a timeout), and half of ``LEAVE_GRACE``, so that a stream of the
    same device on another instance ending, which moves the deadline to the
    grace, is overtaken by this instance's renewal.
    """
    return min(timeout / 3, max(grace / 2, MIN_RENEWAL))


class PresenceHolder:
    """Counts each device's presence streams here and keeps the held ones online."""

    def __init__(self, store: Holding, clock: IReactorTime, timeout: float, grace: float) -> None:
        self._store = store
        self._clock = clock
        self._timeout = timeout
        self.grace = grace
        longest = renewal_period(timeout, grace)
        self._period = longest * _SLOTS_PER_PERIOD / (_SLOTS_PER_PERIOD + 1)
        self._renewals: Deadlines[Device] = Deadlines(
            clock, self._due, resolution=self._period / _SLOTS_PER_PERIOD)
        # Per device: its open presence streams here, and the ping of the latest.
        self._streams: dict[Device, int] = {}
        # Presence streams open here (for ``/metrics``).
        self.streams = 0
        self._pings: dict[Device, Ping] = {}
        # Devices that left (POST /leave here) while a stream was open: not held.
        self._left: set[Device] = set()
        # Devices whose ping or renewal failed (the store away): pinged again.
        self._owed: set[Device] = set()
        # This turn's work, sent as one call each.
        self._renew: dict[Device, None] = {}
        self._release: dict[Device, None] = {}
        self._flush_call: IDelayedCall | None = None
        self._pending: set[Deferred[object]] = set()
        self._failing = False

    def opened(self, ping: Ping) -> None:
        """A presence stream of ``ping``'s device opened: ping it now, hold it."""
        device = (ping.userid, ping.clientid)
        self.streams += 1
        self._streams[device] = self._streams.get(device, 0) + 1
        self._pings[device] = ping
        self._left.discard(device)
        self._release.pop(device, None)
        self._ping(device, ping)

    def closed(self, ping: Ping) -> None:
        """A presence stream ended (closed, aborted, or its client found gone)."""
        device = (ping.userid, ping.clientid)
        self.streams -= 1
        count = self._streams.get(device, 0) - 1
        if count > 0:
            self._streams[device] = count
            return
        self._streams.pop(device, None)
        self._pings.pop(device, None)
        self._renewals.disarm(device)
        self._renew.pop(device, None)
        self._owed.discard(device)
        if device in self._left:
            self._left.discard(device)
        else:
            self._release[device] = None
            self._schedule()

    def left(self, userid: str, clientid: str) -> None:
        """``POST /leave`` of the device: its open streams here hold it no more."""
        device = (userid, clientid)
        if device in self._streams:
            self._left.add(device)
            self._renewals.disarm(device)
            self._renew.pop(device, None)
            self._owed.discard(device)

    def close(self) -> Deferred[None]:
        """Send what is owed (the grace of streams that just ended) and stop renewing.

        Called at shutdown once every stream is closed, before the store is.
        """
        self._renewals.stop()
        self._renew.clear()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush()
        if not self._pending:
            return succeed(None)
        return DeferredList(list(self._pending)).addCallback(lambda _: None)

    def _ping(self, device: Device, ping: Ping) -> None:
        self._renewals.arm(device, self._period)
        self._track(self._store.ping(ping), (device,))

    def _due(self, device: Device) -> None:
        self._renewals.arm(device, self._period)
        self._renew[device] = None
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        """This turn's renewals and releases: one store call for each."""
        self._flush_call = None
        renew, self._renew = self._renew, {}
        release, self._release = self._release, {}
        if renew:
            owed = [device for device in renew if device in self._owed]
            for device in owed:
                self._owed.discard(device)
                del renew[device]
                self._ping(device, self._pings[device])
            if renew:
                devices = tuple(renew)
                self._track(self._store.rearm(devices, self._timeout), devices)
        if release:
            self._track(self._store.rearm(tuple(release), self.grace), ())

    def _track(self, d: Deferred[None], devices: tuple[Device, ...]) -> None:
        pending: Deferred[object] = d.addCallbacks(self._stored, self._failed, (), {}, (devices,))
        self._pending.add(pending)
        pending.addBoth(self._done, pending)

    def _done(self, result: object, d: Deferred[object]) -> object:
        self._pending.discard(d)
        return result

    def _stored(self, _: object) -> None:
        if self._failing:
            self._failing = False
            log.info("presence streams: the store takes renewals again")

    def _failed(self, failure: Failure, devices: tuple[Device, ...]) -> None:
        """The store is away: ping the held devices again at their next turn.

        Their deadlines may have passed meanwhile, and a renewal moves only
        the deadline of a device still online. Logged once per outage.
        """
        for device in devices:
            if device in self._streams and device not in self._left:
                self._owed.add(device)
        if not self._failing:
            self._failing = True
            log.warn("presence streams: the store did not take a renewal ({error});"
                     " held devices are pinged again once it does", error=failure.getErrorMessage())
