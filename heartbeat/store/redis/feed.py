"""The change feed (SPEC §8) on one Redis (or Sentinel's master): a stream, read by position.

The scripts that make each change append it to one stream (``lua/feed.lua``,
in the same atomic step), trimmed by ``MINID`` as it goes; a position is the
feed's epoch (a key, so a flushed Redis starts a new feed) and a stream id.
Reads run ``lua/changes.lua``, which also answers Redis's own time, so
whether a position is past ``CHANGES_RETENTION`` is judged by the clock that
stamped the entries. Other instances' changes are noticed by polling the
feed's tip while someone waits (a long poll, a webhook sender).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from heartbeat.core.changes import Change, Page, Position, PositionGone, new_epoch
from heartbeat.store.redis.lua import Scripts

# Seconds between looks at the feed's tip while a reader waits.
POLL_INTERVAL = 0.25

Run = Callable[[Any, Sequence[str], Sequence[object]], Deferred[Any]]


def stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def feed_keys(prefix: str) -> tuple[str, str, str]:
    """The feed's stream, its epoch and the webhooks' delivered positions.

    Tagged like the deadline partitions: no user's key starts with ``{``, and
    a user's own tagged keys end in ``:devices``, ``:online`` or ``:deadlines``.
    """
    stream = "{" + prefix + "changes}"
    return stream, stream + ":epoch", stream + ":delivered"


def change_of(epoch: str, entry: Sequence[Any]) -> Change:
    entry_id, flat = entry
    fields = dict(zip(flat[::2], flat[1::2]))
    change = Change(fields["t"], fields["u"], int(fields["tm"]), fields["s"], fields["o"] == "1",
                    int(fields["at"]), fields.get("c"))
    return change.stamped(Position(epoch, (entry_id,)))


def _newest(answer: list[Any]) -> tuple[int, int]:
    """A read's tip: above every entry it saw, below every entry added after it."""
    _, _, floor, last, _ = answer
    return max(stream_id(floor), stream_id(last)) if last else stream_id(floor)


class RedisFeed:
    """The :class:`~heartbeat.core.changes.ChangeFeed` of a Redis store (one Redis)."""

    def __init__(self, prefix: str, retention: float, clock: IReactorTime,
                 scripts: Scripts, run: Run, command: Callable[..., Deferred[Any]]) -> None:
        self.stream, self._epoch_key, self._delivered_key = feed_keys(prefix)
        self.retention_ms = int(retention * 1000)
        self._scripts = scripts
        self._run = run
        self._command = command
        self._epoch = new_epoch()
        self.changes_recorded = 0
        self._waiting: list[tuple[tuple[int, int], Deferred[None]]] = []
        self._poll = LoopingCall(self._look)
        self._poll.clock = clock

    def _read(self, after: str, count: int) -> Deferred[Any]:
        return self._run(self._scripts.changes, [self.stream, self._epoch_key],
                         [self._epoch, after, count, self.retention_ms])

    def position(self) -> Deferred[Position]:
        return self._read("", 0).addCallback(self._tip)

    def _tip(self, answer: list[Any]) -> Position:
        newest = _newest(answer)
        return Position(answer[0], (f"{newest[0]}-{newest[1]}",))

    def changes(self, after: Position | None, limit: int,
                userids: Collection[str] | None = None) -> Deferred[Page]:
        start = ""
        if after is not None:
            if len(after.marks) != 1:
                return fail(PositionGone())
            start = after.marks[0]
        # A user filter reads a full page and keeps that user's: a page may hold fewer.
        d = self._read(start, limit)
        return d.addCallback(self._page, after, limit, userids)

    def _page(self, answer: list[Any], after: Position | None, limit: int,
              userids: Collection[str] | None) -> Page:
        epoch, now_ms, _, _, entries = answer
        tip = _newest(answer)
        if after is not None:
            at = stream_id(after.marks[0])
            if after.epoch != epoch or at[0] < int(now_ms) - self.retention_ms or at > tip:
                raise PositionGone()
        changes = [change_of(epoch, entry) for entry in entries]
        positions = [Position(epoch, (entry[0],)) for entry in entries]
        if len(entries) >= limit:
            next_position = positions[-1]
        else:
            next_position = Position(epoch, (f"{tip[0]}-{tip[1]}",))
        kept = [(c, p) for c, p in zip(changes, positions) if userids is None or c.userid in userids]
        return Page(tuple(c for c, _ in kept), next_position, tuple(p for _, p in kept))

    def wait(self, after: Position) -> Deferred[None]:
        entry: tuple[tuple[int, int], Deferred[None]]

        def cancel(_: Deferred[None]) -> None:
            if entry in self._waiting:
                self._waiting.remove(entry)
            if not self._waiting and self._poll.running:
                self._poll.stop()

        d: Deferred[None] = Deferred(cancel)
        mark = stream_id(after.marks[0]) if len(after.marks) == 1 else (0, 0)
        entry = (mark, d)
        self._waiting.append(entry)
        if not self._poll.running:
            self._poll.start(POLL_INTERVAL, now=True)
        return d

    def _look(self) -> Deferred[None] | None:
        if not self._waiting:
            if self._poll.running:
                self._poll.stop()
            return None
        d = self._read("", 0)
        d.addCallback(self._looked)
        d.addErrback(lambda _: None)  # Redis away: look again next time
        return d

    def _looked(self, answer: list[Any]) -> None:
        last = answer[3]
        if not last:
            return
        newest = stream_id(last)
        due = [(mark, d) for mark, d in self._waiting if mark < newest]
        self._waiting = [(mark, d) for mark, d in self._waiting if mark >= newest]
        if not self._waiting and self._poll.running:
            self._poll.stop()
        for _, d in due:
            d.callback(None)

    def delivered(self, name: str) -> Deferred[Position | None]:
        d = self._command("HGET", self._delivered_key, name)
        return d.addCallback(lambda text: None if not text else Position.parse(text))

    def set_delivered(self, name: str, position: Position, owner: str = "") -> Deferred[bool]:
        d = self._run(self._scripts.delivered, [self._claim_key(name), self._delivered_key],
                      [owner, name, str(position)])
        return d.addCallback(lambda recorded: recorded == 1)

    def claim(self, name: str, owner: str, seconds: float) -> Deferred[bool]:
        d = self._run(self._scripts.claim, [self._claim_key(name)], [owner, int(seconds * 1000)])
        return d.addCallback(lambda held: held == 1)

    def _claim_key(self, name: str) -> str:
        return self.stream + ":claim:" + name

    def stop(self) -> None:
        if self._poll.running:
            self._poll.stop()
        waiting, self._waiting = self._waiting, []
        for _, d in waiting:
            d.cancel()
