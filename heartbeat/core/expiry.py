"""Ending streams when their token expires: one heap and one timer for all of them.

A stream opened with a token that has ``exp`` must end then (SPEC §1), so a
client keeps reading only while it holds a valid token; EventSource
reconnects with whatever token the page has now. Tens of thousands of
streams each with a timer would cost a DelayedCall apiece in the reactor's
own heap, re-sorted on every cancel; here it is one entry per stream in a
heap keyed by its end, and one ``callLater`` for the earliest.

A stream that closes early is not looked for in the heap: its entry is
dropped when it falls due, or when the heap has doubled since it was last
swept of closed streams, so dead entries never outnumber the live ones by
more than that.
"""

from __future__ import annotations

import heapq
from itertools import count
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

# Below this many entries a sweep is not worth its walk.
_MIN_SWEEP = 1024


class Ending(Protocol):
    """What the heap needs of a stream (:class:`~heartbeat.core.stream.Stream`)."""

    @property
    def closed(self) -> bool: ...

    def expire(self) -> None: ...


class Expiry:
    """Calls ``expire()`` on each stream added once the clock reaches its end."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        # (end, order added, stream): the order breaks ties without
        # comparing streams.
        self._heap: list[tuple[float, int, Ending]] = []
        self._order = count()
        self._timer: IDelayedCall | None = None
        self._sweep_at = _MIN_SWEEP

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, stream: Ending, end: float) -> None:
        """End ``stream`` at ``end`` (the clock's seconds): at once if that is past."""
        heapq.heappush(self._heap, (end, next(self._order), stream))
        if len(self._heap) >= self._sweep_at:
            self._sweep()
        self._arm()

    def _arm(self) -> None:
        """One timer, due at the earliest end; moved only when that comes sooner."""
        if not self._heap:
            return
        due = self._heap[0][0]
        if self._timer is not None:
            if self._timer.getTime() <= due:
                return
            self._timer.cancel()
        self._timer = self._clock.callLater(max(0.0, due - self._clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        heap = self._heap
        while heap and heap[0][0] <= now:
            stream = heapq.heappop(heap)[2]
            if not stream.closed:
                stream.expire()
        self._arm()

    def _sweep(self) -> None:
        self._heap = [entry for entry in self._heap if not entry[2].closed]
        heapq.heapify(self._heap)
        self._sweep_at = max(_MIN_SWEEP, 2 * len(self._heap))
