"""The change feed (SPEC §8) in Redis: streams, read by position.

The scripts that make each change append it to a stream (``lua/feed.lua``),
in the same atomic step, trimmed by ``MINID`` as it goes. Where the streams
are is a reader's business; the rest is :class:`RedisFeed`'s, the same for
both: pages, when a position is gone, waiting, the webhooks' claims.

- One Redis (or Sentinel's master), :class:`SingleReader`: one stream; a
  position is the feed's epoch (a key, so a flushed Redis starts a new feed)
  and a stream id. Reads run ``lua/changes.lua``.
- A Cluster, :class:`ClusterReader`: a script touches one slot, so each user
  slot has its own stream (:func:`slot_streams`) beside the user's keys, and
  a position is the epoch, a stream id and a slot (see the class).

Reads also answer Redis's own time, so whether a position is past
``CHANGES_RETENTION`` is judged by the clock that stamped the entries.
Other instances' changes are noticed by looking, while someone waits (a
long poll, a webhook sender), for a change after the earliest waiter's
position.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from twisted.internet.defer import (
    Deferred,
    DeferredList,
    FirstError,
    ensureDeferred,
    fail,
    gatherResults,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from txredisapi import ConnectionError as RedisConnectionError
from txredisapi import ResponseError
from txredisapi import TimeoutError as RedisTimeoutError

from heartbeat.core.changes import Change, Page, Position, PositionGone, new_epoch
from heartbeat.core.store_contract import StoreUnavailable
from heartbeat.store.redis.keys import CLUSTER_SLOTS, slot, slot_tag
from heartbeat.store.redis.lua import Scripts

if TYPE_CHECKING:
    from heartbeat.store.redis.cluster import Cluster

# Seconds between looks at the feed while a reader waits: one Redis, and a Cluster,
# where a look costs every master a call over all its slots.
POLL_INTERVAL = 0.25
CLUSTER_POLL_INTERVAL = 1.0
# A Cluster read's slots that the masters could not read (migrating) are read one
# by one through the routing, up to this many; more, and the read returns nothing new.
ALONE = 64
# A Cluster read's first window of stream time after its position (ms), and its least.
WINDOW_MS = 10_000
MIN_WINDOW_MS = 10
# A position past the tip is gone if its time is this far past the readers' clock
# (ms); nearer, it is a change just recorded, read as nothing new yet.
AHEAD_MS = 1000
# The highest sequence number of a stream id.
MAX_SEQ = 2**64 - 1

Run = Callable[[Any, Sequence[str], Sequence[object]], Deferred[Any]]


def stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def feed_keys(prefix: str) -> tuple[str, str, str]:
    """The feed's stream (one Redis), its epoch and the webhooks' delivered positions.

    Tagged like the deadline partitions: no user's key starts with ``{``, and
    a user's own tagged keys end in ``:devices``, ``:online`` or ``:deadlines``.
    In a Cluster all three share one slot, the webhooks' claims too.
    """
    stream = "{" + prefix + "changes}"
    return stream, stream + ":epoch", stream + ":delivered"


@cache
def slot_streams(prefix: str) -> list[str]:
    """Each Cluster slot's stream of changes, by slot: the slot's tag, so it lives beside
    the slot's users' keys, which (ending in ``:devices``, …, or with no ``{``) it is none of."""
    return ["{" + slot_tag(n) + "}" + prefix + "changes" for n in range(CLUSTER_SLOTS)]


def change_of(position: Position, fields: Sequence[Any]) -> Change:
    """The change of a stream entry at ``position`` (its id: the position's ``change_id``)."""
    values = dict(zip(fields[::2], fields[1::2]))
    change = Change(values["t"], values["u"], int(values["tm"]), values["s"], values["o"] == "1",
                    int(values["at"]), values.get("c"))
    return change.stamped(position)


@dataclass(frozen=True)
class FeedRead:
    """One read of the feed.

    ``tip``: every entry at or before it was there to be read, every entry
    added after the read is after it. ``entries``: each entry read (its
    position, its fields), in order, none past the tip. ``newest``: the
    newest entry at or before the tip, where the reader sees it at no cost
    (one stream's last; else None).
    """

    epoch: str
    now_ms: int
    tip: Position
    entries: list[tuple[Position, Sequence[Any]]]
    newest: Position | None = None


class FeedReader(Protocol):
    # Seconds between looks while someone waits.
    poll_interval: float

    def fits(self, position: Position) -> bool:
        """Whether ``position`` has the shape of this feed's (else it is gone)."""

    def read(self, epoch: str, after: Position | None, count: int,
             retention_ms: int) -> Deferred[FeedRead]:
        """Up to ``count`` entries after ``after`` (None: from the oldest kept); 0 or less:
        only the tip. ``epoch`` is kept if the feed has none yet."""

    def bus_position(self, epoch: str | None, channel: str, text: str) -> Position:
        """The position a bus message on ``channel`` gives as ``text`` (``with_feed``);
        ``epoch`` the feed's as last read. :class:`PositionGone` if it is none."""


class RedisFeed:
    """The :class:`~heartbeat.core.changes.ChangeFeed` of a Redis store, over its reader."""

    def __init__(self, prefix: str, retention: float, clock: IReactorTime, reader: FeedReader,
                 scripts: Scripts, run: Run, command: Callable[..., Deferred[Any]]) -> None:
        self._stream, _, self._delivered_key = feed_keys(prefix)
        self.retention_ms = int(retention * 1000)
        self._reader = reader
        self._scripts = scripts
        self._run = run
        self._command = command
        # The feed's epoch as last read (None before the first read).
        self.epoch: str | None = None
        # Changes this instance's scripts recorded (for /metrics), as they answered.
        self.changes_recorded = 0
        # Each waiter's position, where it falls (Position.order), and its Deferred.
        self._waiting: list[tuple[tuple[int, ...], Position, Deferred[None]]] = []
        self._poll = LoopingCall(self._look)
        self._poll.clock = clock

    def counted(self, reply: list[Any]) -> list[Any]:
        """The reply of a script that records changes, their number (its last
        element: lua/feed.lua) counted and taken off."""
        self.changes_recorded += int(reply.pop())
        return reply

    def counted_one(self, reply: list[Any]) -> Any:
        """As :meth:`counted`, for a script that answers one value: that value."""
        return self.counted(reply)[0]

    def _read(self, after: Position | None, count: int) -> Deferred[FeedRead]:
        # A new epoch each time: a flushed Redis must not get an earlier one back.
        d = self._reader.read(new_epoch(), after, count, self.retention_ms)
        return d.addCallbacks(self._seen, _unavailable)

    def _seen(self, read: FeedRead) -> FeedRead:
        self.epoch = read.epoch
        return read

    def position(self) -> Deferred[Position]:
        return self._read(None, -1).addCallback(lambda read: read.tip)

    def bus_position(self, channel: str, text: str) -> Position:
        """The position of a change a bus message on ``channel`` tells (codec.from_message)."""
        return self._reader.bus_position(self.epoch, channel, text)

    def changes(self, after: Position | None, limit: int,
                userids: Collection[str] | None = None) -> Deferred[Page]:
        if after is not None and not self._reader.fits(after):
            return fail(PositionGone())
        # A user filter reads a full page and keeps that user's: a page may hold fewer.
        d = self._read(after, limit)
        return d.addCallback(self._page, after, limit, userids)

    def _page(self, read: FeedRead, after: Position | None, limit: int,
              userids: Collection[str] | None) -> Page:
        if after is not None:
            at = after.order
            if (after.epoch != read.epoch or at[0] < read.now_ms - self.retention_ms
                    or at[0] > read.now_ms + AHEAD_MS):
                raise PositionGone()
            if at > read.tip.order:  # just recorded, by a master whose clock is ahead
                return Page((), after)
        entries = read.entries
        next_position = entries[-1][0] if len(entries) >= limit else read.tip
        kept = [(change_of(position, fields), position) for position, fields in entries]
        if userids is not None:
            kept = [(c, p) for c, p in kept if c.userid in userids]
        return Page(tuple(c for c, _ in kept), next_position, tuple(p for _, p in kept))

    def wait(self, after: Position) -> Deferred[None]:
        entry: tuple[tuple[int, ...], Position, Deferred[None]]

        def cancel(_: Deferred[None]) -> None:
            if entry in self._waiting:
                self._waiting.remove(entry)
            if not self._waiting and self._poll.running:
                self._poll.stop()

        d: Deferred[None] = Deferred(cancel)
        if not self._reader.fits(after):  # read on at once: it is gone
            d.callback(None)
            return d
        entry = (after.order, after, d)
        self._waiting.append(entry)
        if not self._poll.running:
            self._poll.start(self._reader.poll_interval, now=True)
        return d

    def _look(self) -> Deferred[None] | None:
        """Read one change after the earliest waiter's position (a Cluster's
        masters then send only the streams that have one)."""
        if not self._waiting:
            if self._poll.running:
                self._poll.stop()
            return None
        _, earliest, _ = min(self._waiting, key=lambda entry: entry[0])
        d = self._read(earliest, 1).addCallback(self._looked)
        return d.addErrback(lambda _: None)  # Redis away: look again next time

    def _looked(self, read: FeedRead) -> None:
        seen = [position.order for position, _ in read.entries[-1:]]
        if read.newest is not None:
            seen.append(read.newest.order)
        if not seen:
            return
        newest = max(seen)
        due = [d for mark, _, d in self._waiting if mark < newest]
        self._waiting = [entry for entry in self._waiting if entry[0] >= newest]
        if not self._waiting and self._poll.running:
            self._poll.stop()
        for d in due:
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
        return self._stream + ":claim:" + name

    def stop(self) -> None:
        if self._poll.running:
            self._poll.stop()
        waiting, self._waiting = self._waiting, []
        for _, _, d in waiting:
            d.cancel()


class SingleReader:
    """One Redis's stream, read by ``lua/changes.lua``."""

    poll_interval = POLL_INTERVAL

    def __init__(self, prefix: str, scripts: Scripts, run: Run) -> None:
        self._stream, self._epoch_key, _ = feed_keys(prefix)
        self._script = scripts.changes
        self._run = run

    @staticmethod
    def fits(position: Position) -> bool:
        return len(position.marks) == 1

    def read(self, epoch: str, after: Position | None, count: int,
             retention_ms: int) -> Deferred[FeedRead]:
        start = "" if after is None else after.marks[0]
        d = self._run(self._script, [self._stream, self._epoch_key],
                      [epoch, start, count, retention_ms])
        return d.addCallback(self._answered)

    @staticmethod
    def _answered(answer: list[Any]) -> FeedRead:
        epoch, now_ms, floor, last, entries = answer
        # Above every entry it saw (the newest), below every entry added after it.
        tip = max(stream_id(floor), stream_id(last)) if last else stream_id(floor)
        return FeedRead(epoch, int(now_ms), Position(epoch, (f"{tip[0]}-{tip[1]}",)),
                        [(Position(epoch, (entry[0],)), entry[1]) for entry in entries],
                        Position(epoch, (last,)) if last else None)

    def bus_position(self, epoch: str | None, channel: str, text: str) -> Position:
        return Position.parse(text)  # made whole by the script (layout_single.lua)


class _Part(NamedTuple):
    """One read of every slot of a Cluster: the entries up to ``read.tip`` (all of
    them); ``last``: that is the feed's tip (or a slot could be read nowhere), no later
    window to read now; ``failed``: a slot could be read nowhere; ``raw``: entries the
    masters sent."""

    read: FeedRead
    last: bool
    failed: bool = False
    raw: int = 0


class ClusterReader:
    """A Cluster's streams, one per user slot, read as one feed.

    Entries are ordered by (stream id, slot); a position is
    ``Position(epoch, ("<ms>-<seq>", "<slot>"))``, text
    ``<epoch>_<ms>-<seq>.<slot>``. The epoch is a key of its own slot (the
    webhooks' keys' slot), made by a read if missing: a flushed Cluster is a
    new feed. A recorded change knows only its stream id (the epoch is
    another slot's); its slot is its user's, so a bus message's position is
    made whole here, with the epoch the feed last read.

    A read runs ``lua/slot_changes.lua`` once per master, on that master's
    connection, over the streams of the slots it holds, and answers the
    master's own time; the entries are merged up to the **tip**: the
    earliest of the masters' times, less a millisecond. A stream id's time
    is the later of its master's clock and the stream's last id, so every
    entry added after a master's read is later than that read's time — as
    long as the masters' clocks agree and do not go back (a slot moving
    between masters takes its stream to the other's clock). So every entry
    at or before the tip was there to be read.

    Each stream is read after the position up to ``limit`` entries, and only
    so far in stream time (a window, which grows while pages come back short
    and shrinks when the masters send many more entries than a page holds):
    a reader far behind would otherwise be sent every slot's ``limit``
    entries for each page. A read is complete up to the earliest of the
    tip, the window's end and the last entry of any stream that sent its
    ``limit``; a short page reads the next window at once.

    A slot a master could not read (migrating away: its stream has gone to
    the target; or no longer its own) is read alone through the routing,
    which follows ``MOVED`` and ``ASK``. If that fails too, no slot is ever
    skipped: the read returns nothing past where it is complete (the reader
    asks again), or fails if that is nowhere.
    """

    poll_interval = CLUSTER_POLL_INTERVAL

    def __init__(self, cluster: Cluster, prefix: str, scripts: Scripts) -> None:
        self._cluster = cluster
        self._streams = slot_streams(prefix)
        self._epoch_key = feed_keys(prefix)[1]
        self._read_slots = scripts.slot_changes
        self._epoch = scripts.feed_epoch
        self._window_ms = WINDOW_MS
        # Each master's streams, for the slot map they were named from.
        self._named: tuple[list[tuple[Any, list[int]]], list[list[str]]] | None = None

    @staticmethod
    def fits(position: Position) -> bool:
        if len(position.marks) != 2:
            return False
        entry, at = position.marks
        return "-" in entry and at.isdigit() and int(at) < CLUSTER_SLOTS

    def read(self, epoch: str, after: Position | None, count: int,
             retention_ms: int) -> Deferred[FeedRead]:
        if count <= 0:
            return self._part(epoch, after, -1, retention_ms, None).addCallback(
                lambda part: part.read)
        return ensureDeferred(self._pages(epoch, after, count, retention_ms))

    async def _pages(self, epoch: str, after: Position | None, count: int,
                     retention_ms: int) -> FeedRead:
        since = after
        if since is None:  # from the oldest kept, by the masters' clock
            now_ms = (await self._part(epoch, None, -1, retention_ms, None)).read.now_ms
            since = _ending(epoch, now_ms - retention_ms - 1)
        got: list[tuple[Position, Sequence[Any]]] = []
        while True:
            end_ms = since.order[0] + self._window_ms
            part = await self._part(epoch, since, count - len(got), retention_ms, end_ms)
            if part.failed and after is None and not got:
                raise StoreUnavailable()
            got += part.read.entries[:count - len(got)]
            if part.raw > 4 * count:
                self._window_ms = max(MIN_WINDOW_MS, self._window_ms // 4)
            if len(got) >= count or part.last:
                return FeedRead(part.read.epoch, part.read.now_ms, part.read.tip, got)
            self._window_ms = min(retention_ms, self._window_ms * 2)
            since = part.read.tip

    def _part(self, epoch: str, since: Position | None, count: int, retention_ms: int,
              end_ms: int | None) -> Deferred[_Part]:
        start, upto, end = _bounds(since, end_ms)
        masters, names = self._names()
        reads = []
        for (server, slots), streams in zip(masters, names):
            args: list[object] = [start, bisect_right(slots, upto), count, retention_ms, end]
            if count > 0:
                args += streams
            reads.append(self._cluster.run_at(server, self._read_slots, [], args))
        epoch_slot = slot(self._epoch_key)
        made = self._epoch.run(self._cluster.commands(epoch_slot), [self._epoch_key], [epoch])
        d = gatherResults([made, DeferredList(reads, consumeErrors=True)], consumeErrors=True)
        return d.addCallback(self._merge, masters, since, count, retention_ms, end_ms)

    def _names(self) -> tuple[list[tuple[Any, list[int]]], list[list[str]]]:
        masters = self._cluster.masters()
        if self._named is None or self._named[0] is not masters:
            self._named = masters, [[self._streams[n] for n in slots] for _, slots in masters]
        return self._named

    def _merge(self, answers: list[Any], masters: list[tuple[Any, list[int]]],
               since: Position | None, count: int, retention_ms: int, end_ms: int | None
               ) -> Deferred[_Part] | _Part:
        epoch, replies = answers
        times: list[int] = []
        found: list[tuple[int, list[Any]]] = []
        failed: list[int] = []
        complete = len(masters) > 0 and self._cluster.complete
        for (_, slots), (ok, reply) in zip(masters, replies):
            if not ok:
                complete = False
                continue
            times.append(int(reply[0]))
            for number, result in zip(reply[1::2], reply[2::2]):
                n = slots[int(number) - 1]
                if isinstance(result, list):
                    found.append((n, result))
                else:
                    failed.append(n)
        if not times or (count > 0 and not complete):
            raise StoreUnavailable()
        if count <= 0 or not failed:
            return _part_of(epoch, times, found, since, count, end_ms, True)
        self._cluster.refresh_soon()  # a slot not where the map said: read the map again
        if len(failed) > ALONE:
            return _part_of(epoch, times, found, since, count, end_ms, False)
        alone = [self._read_alone(n, since, count, retention_ms, end_ms) for n in failed]
        d = DeferredList(alone, consumeErrors=True)
        return d.addCallback(self._with_alone, epoch, times, found, failed, since, count,
                             end_ms)

    def _read_alone(self, n: int, since: Position | None, count: int, retention_ms: int,
                    end_ms: int | None) -> Deferred[Any]:
        start, upto, end = _bounds(since, end_ms)
        stream = self._streams[n]
        args = [start, int(n <= upto), count, retention_ms, end, stream]
        return self._read_slots.run(self._cluster.commands(n), [stream], args)

    @staticmethod
    def _with_alone(replies: list[tuple[bool, Any]], epoch: str, times: list[int],
                    found: list[tuple[int, list[Any]]], failed: list[int],
                    since: Position | None, count: int, end_ms: int | None) -> _Part:
        for n, (ok, reply) in zip(failed, replies):
            if not ok or (len(reply) > 1 and not isinstance(reply[2], list)):
                return _part_of(epoch, times, found, since, count, end_ms, False)
            times.append(int(reply[0]))
            if len(reply) > 1:
                found.append((n, reply[2]))
        return _part_of(epoch, times, found, since, count, end_ms, True)

    def bus_position(self, epoch: str | None, channel: str, text: str) -> Position:
        if epoch is None:
            raise PositionGone()
        return Position.parse(f"{epoch}_{text}.{slot(channel)}")


def _unavailable(failure: Failure) -> Failure:
    """Redis away or refusing (a master's failover: a lost connection, ``CLUSTERDOWN``,
    a timeout) makes a read of the feed a 503 with ``Retry-After``, as for pings."""
    if isinstance(failure.value, FirstError):
        failure = failure.value.subFailure
    if failure.check(RedisConnectionError, RedisTimeoutError, ResponseError):
        return Failure(StoreUnavailable())
    return failure


def _bounds(since: Position | None, end_ms: int | None) -> tuple[str, int, str]:
    """``lua/slot_changes.lua``'s bounds for a read after ``since`` up to ``end_ms``: the
    stream id to start from ('' for the oldest kept), the last slot read after it rather
    than from it (-1: none), and the last millisecond ('' for all)."""
    start, upto = ("", -1) if since is None else (since.marks[0], int(since.marks[1]))
    return start, upto, "" if end_ms is None else str(end_ms)


def _ending(epoch: str, ms: int) -> Position:
    """The position after every entry of millisecond ``ms``, before every later one."""
    return Position(epoch, (f"{ms}-{MAX_SEQ}", str(CLUSTER_SLOTS - 1)))


def _part_of(epoch: str, times: list[int], found: list[tuple[int, list[Any]]],
             since: Position | None, count: int, end_ms: int | None, complete: bool) -> _Part:
    """What the masters sent, merged: every entry up to where the read is complete."""
    now_ms = min(times)
    if not complete:  # a slot unread: nothing past ``since``
        if since is None:
            raise StoreUnavailable()
        return _Part(FeedRead(epoch, now_ms, since, []), True, True)
    tip = _ending(epoch, now_ms - 1)
    last = True
    if end_ms is not None and end_ms < now_ms - 1:
        tip, last = _ending(epoch, end_ms), False
    bound = tip.order
    for n, stream in found:
        if count > 0 and len(stream) >= count:  # its later entries were not sent
            full = Position(epoch, (stream[-1][0], str(n)))
            if full.order < bound:
                tip, bound, last = full, full.order, False
    entries = sorted(
        (position.order, position, fields)
        for position, fields in (
            (Position(epoch, (entry[0], str(n))), entry[1])
            for n, stream in found for entry in stream)
        if position.order <= bound)
    raw = sum(len(stream) for _, stream in found)
    return _Part(FeedRead(epoch, now_ms, tip, [(p, f) for _, p, f in entries]), last, raw=raw)
