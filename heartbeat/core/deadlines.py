"""Many deadlines, one timer: a wheel of one-second slots.

heartbeat's one timer structure, for every deadline that many items hold at
once: a device's presence timeout (the embedded stores), a connection's
request timeout (the edge) and a stream's token expiry (the hub). Nearly
every one is cancelled or moved before it falls due. A reactor
``DelayedCall`` per item would cost an object and a push into the
reactor's heap each time, and a cancelled one stays in that heap until the
reactor compacts it; here arming is a dict insertion, cancelling a dict
removal, and a single timer runs only while something is armed, waking
once per occupied slot.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime

T = TypeVar("T", bound=Hashable)

# Items handled in one reactor turn: thousands falling due together (one
# user's devices, a burst of connections timing out) are spread over turns,
# so the pings and requests that come meanwhile wait milliseconds, not seconds.
DUE_PER_TURN = 1000


class Deadlines(Generic[T]):
    """Calls ``on_due(item)`` once each armed item's deadline has passed.

    Deadlines are rounded up to the next ``resolution`` seconds, so an item
    falls due no sooner than asked and at most ``resolution`` later. The
    slots in use are a heap, so a store with a slot per second of its
    timeout finds the earliest at once; re-arming into the slot an item is
    already in (a device pinging twice in a second) costs one lookup.
    """

    def __init__(
        self, clock: IReactorTime, on_due: Callable[[T], None], resolution: float = 1.0
    ) -> None:
        self._clock = clock
        self._on_due = on_due
        self._resolution = resolution
        # Insertion-ordered, so items of one slot fall due in the order armed.
        self._slots: dict[int, dict[T, None]] = {}
        self._slot_of: dict[T, int] = {}
        # Every slot in use, perhaps also some emptied since: skipped when reached.
        self._order: list[int] = []
        self._timer: IDelayedCall | None = None
        self._timer_slot: int | None = None

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, item: T) -> bool:
        return item in self._slot_of

    def arm(self, item: T, after: float) -> None:
        """Call ``on_due(item)`` ``after`` seconds from now (replacing any earlier arming)."""
        self.arm_at(item, self._clock.seconds() + after)

    def arm_at(self, item: T, when: float) -> None:
        """Call ``on_due(item)`` once the clock reads ``when`` (replacing any earlier arming)."""
        slot = math.ceil(when / self._resolution)
        if self._slot_of.get(item) == slot:
            return
        self.disarm(item)
        items = self._slots.get(slot)
        if items is None:
            items = self._slots[slot] = {}
            heapq.heappush(self._order, slot)
        items[item] = None
        self._slot_of[item] = slot
        if self._timer_slot is None or slot < self._timer_slot:
            self._schedule(slot)

    def disarm(self, item: T) -> None:
        slot = self._slot_of.pop(item, None)
        if slot is None:
            return
        items = self._slots[slot]
        del items[item]
        if not items:
            del self._slots[slot]

    def stop(self) -> None:
        """Forget every deadline and the timer (shutdown)."""
        self._slots.clear()
        self._slot_of.clear()
        self._order.clear()
        self._cancel_timer()

    def _schedule(self, slot: int) -> None:
        self._cancel_timer()
        self._timer_slot = slot
        delay = max(0.0, slot * self._resolution - self._clock.seconds())
        self._timer = self._clock.callLater(delay, self._expire)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_slot = None

    def _expire(self) -> None:
        self._timer = None
        self._timer_slot = None
        now = self._clock.seconds()
        order = self._order
        budget = DUE_PER_TURN
        while budget and order and order[0] * self._resolution <= now:
            slot = order[0]
            items = self._slots.get(slot)
            if items is None:
                heapq.heappop(order)
                continue
            for item in list(itertools.islice(items, budget)):
                if self._slot_of.get(item) != slot:
                    continue  # disarmed or moved by an earlier item's on_due
                self.disarm(item)
                budget -= 1
                self._on_due(item)
        while order and order[0] not in self._slots:
            heapq.heappop(order)
        # Items still due (past the budget) go next turn, at once; an on_due
        # that armed an item may have set the timer for a later slot.
        if order and (self._timer_slot is None or order[0] < self._timer_slot):
            self._schedule(order[0])
