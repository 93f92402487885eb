"""The in-process stores' change feed: sequence numbers, retention, long-poll waiters.

:class:`ChangeLog` is the whole feed of the memory store (kept in a deque,
trimmed by ``CHANGES_RETENTION`` as it goes) and the reactor-side half of
the SQLite store's, whose changes are read back from the file.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from heartbeat.core.changes import (
    Change,
    Page,
    Position,
    PositionGone,
    Waiters,
    erased_change,
    new_epoch,
)

# CHANGES_RETENTION's default: a day.
DEFAULT_RETENTION = 24 * 3600.0


def now_ms(clock: IReactorTime) -> int:
    return int(clock.seconds() * 1000)


class ChangeLog:
    """A feed numbered 1, 2, … within one ``epoch``, its older changes trimmed.

    ``trimmed`` is the highest sequence number no longer kept: a reader
    after it misses nothing, one before it gets :class:`PositionGone`.
    """

    def __init__(self, clock: IReactorTime, retention: float = DEFAULT_RETENTION,
                 epoch: str | None = None, newest: int = 0, trimmed: int = 0) -> None:
        self.clock = clock
        self.retention_ms = int(retention * 1000)
        self.epoch = epoch or new_epoch()
        self.newest = newest
        self.trimmed = trimmed
        self.changes_recorded = 0
        self.waiters = Waiters()
        # An erased user's changes leave tombstones (no type, their ``at`` kept for
        # trimming), so numbers still find their place.
        self._kept: deque[Change] = deque()
        self._delivered: dict[str, Position] = {}

    def stamp(self, seq: int, change: Change) -> Change:
        return change.stamped(Position.at(self.epoch, seq))

    def append(self, changes: Iterable[Change]) -> list[Position]:
        """Record ``changes`` (memory only): numbered, kept, waiters woken; their positions."""
        positions = []
        for change in changes:
            self.newest += 1
            self._kept.append(self.stamp(self.newest, change))
            self.changes_recorded += 1
            positions.append(Position.at(self.epoch, self.newest))
        self.trim()
        self.waiters.passed(self.newest)
        return positions

    def erase(self, userid: str, at: int) -> None:
        """Forget ``userid``'s changes, all but the one ``erased`` change (SPEC §2,
        ``DELETE /users``), recorded now (memory only: the SQLite store deletes its
        rows and writes that change in the erasure's transaction)."""
        self._kept = deque(Change("", "", 0, "", False, c.at) if c.userid == userid else c
                           for c in self._kept)
        self.append((erased_change(userid, at),))

    def committed(self, newest: int, count: int) -> None:
        """``count`` changes up to ``newest`` were recorded elsewhere (a file)."""
        self.newest = newest
        self.changes_recorded += count
        self.waiters.passed(newest)

    def cutoff(self) -> int:
        """The ``at`` before which a change is past retention."""
        return now_ms(self.clock) - self.retention_ms

    def trim(self) -> None:
        cutoff = self.cutoff()
        kept = self._kept
        while kept and kept[0].at < cutoff:
            kept.popleft()
            self.trimmed += 1

    def check(self, after: Position | None) -> int:
        """The sequence number to read after; :class:`PositionGone` if not kept."""
        if after is None:
            return self.trimmed
        if after.epoch != self.epoch or not 0 <= after.seq <= self.newest or after.seq < self.trimmed:
            raise PositionGone()
        return after.seq

    # ChangeFeed

    def position(self) -> Deferred[Position]:
        return succeed(Position.at(self.epoch, self.newest))

    def changes(self, after: Position | None, limit: int,
                userids: Collection[str] | None = None) -> Deferred[Page]:
        self.trim()
        try:
            start = self.check(after)
        except PositionGone as e:
            return fail(e)
        # Sequence numbers are consecutive: the first kept is trimmed + 1.
        kept = self._kept
        index = start - self.trimmed
        found: list[Change] = []
        positions: list[Position] = []
        for i in range(index, len(kept)):
            change = kept[i]
            if change.type and (userids is None or change.userid in userids):
                found.append(change)
                positions.append(Position.at(self.epoch, self.trimmed + i + 1))
                if len(found) >= limit:
                    return succeed(Page(tuple(found), positions[-1], tuple(positions)))
        return succeed(Page(tuple(found), Position.at(self.epoch, self.newest), tuple(positions)))

    def wait(self, after: Position) -> Deferred[None]:
        return self.waiters.wait(after.seq if after.epoch == self.epoch else -1, self.newest)

    def delivered(self, name: str) -> Deferred[Position | None]:
        return succeed(self._delivered.get(name))

    def set_delivered(self, name: str, position: Position, owner: str = "") -> Deferred[bool]:
        self._delivered[name] = position
        return succeed(True)

    def claim(self, name: str, owner: str, seconds: float) -> Deferred[bool]:
        return succeed(True)  # one process: its own feed is always its own
