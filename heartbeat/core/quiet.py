"""Streams with options (SPEC §2 "Stream options"): only changes, one snapshot, batches, resume.

A stream without options is a plain :class:`~heartbeat.core.stream.Stream`
and never comes here, so the options cost nothing on the fan-out path of the
streams that do not ask for them. The "did anything visible change" test is
not made here either: the store makes it once per change, as it records the
change in the feed, and the hub sends that change (its event's id the
change's feed position) to the ``changes=only`` streams of its user or
device only.

An :class:`OptionStream` holds live events from the moment it is attached
until its current state is sent (:func:`opening_state` reads it), so that
state always comes first; a held change the state already includes (its
position at or before the state's) is dropped.
"""

from __future__ import annotations

from collections.abc import Collection

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from heartbeat.core.changes import ChangeFeed, Position, PositionGone
from heartbeat.core.presence import Presence, UserState
from heartbeat.core.sse import Event, Frame, encode_frame, event_id
from heartbeat.core.store_contract import HubStore
from heartbeat.core.stream import Stream
from heartbeat.core.stream_options import StreamOptions

# Changes read per page while finding who changed since a resume point.
RESUME_PAGE = 1000


def _covered(position: Position | None, cursor: Position | None) -> bool:
    """Whether a state read at ``cursor`` already includes the change at ``position``
    (both positions of one feed, :attr:`~heartbeat.core.changes.Position.order`)."""
    if position is None or cursor is None or position.epoch != cursor.epoch:
        return False
    if len(position.marks) != len(cursor.marks):
        return False
    return position.order <= cursor.order


class OptionStream(Stream):
    """A stream that asked for ``changes=only``, ``snapshot=1`` or ``batch=N``."""

    __slots__ = ("options", "opening", "pending", "_batch_call", "_next_batch")

    def __init__(
        self,
        userids: tuple[str, ...],
        clock: IReactorTime,
        blocked_timeout: float,
        last_event_id: bytes | None,
        clientid: str | None,
        options: StreamOptions,
        owner: str | None = None,
    ) -> None:
        super().__init__(userids, clock, blocked_timeout, last_event_id, clientid, owner)
        self.options = options
        # Live events held until the current state is sent (the latest of
        # each user, oldest first, as while paused); None once it is sent.
        self.opening: dict[str, Event] | None = {}
        # The batch window: the latest event of each user, oldest first.
        self.pending: dict[str, Event] = {}
        self._batch_call: IDelayedCall | None = None
        self._next_batch = 0.0

    def resume_point(self) -> Position | None:
        """The feed position this ``changes=only`` stream's client last saw, if it is one."""
        if not self.options.changes_only or not self.last_event_id:
            return None
        try:
            return Position.parse(self.last_event_id.decode("ascii"))
        except (UnicodeDecodeError, PositionGone):
            return None

    def send(self, event: Event) -> None:
        if self.opening is not None:
            self.opening.pop(event.change.userid, None)
            self.opening[event.change.userid] = event
        elif self.options.batch:
            change = event.change
            self.seen[change.userid] = change
            # Moved to the end: a batch lists each user's latest in stored order.
            self.pending.pop(change.userid, None)
            self.pending[change.userid] = event
            self._schedule_batch()
        else:
            super().send(event)

    def opened(self, states: dict[str, UserState | None], cursor: Position | None) -> None:
        """Send the current state ``states`` (read at ``cursor``), then what was held."""
        held, self.opening = self.opening or {}, None
        if self.closed:
            return
        options = self.options
        eid = str(cursor) if cursor is not None and options.changes_only else None
        if options.snapshot:
            self._write_snapshot(states, cursor)
        else:
            for userid in self.userids:
                state = states.get(userid)
                view = None if state is None else state.view(self.clientid)
                if view is None or (eid is None and self.skip_resumed(view)):
                    continue
                Stream.send(self, Event(view) if eid is None else Event(view, cursor))
        self._next_batch = self._clock.seconds() + options.batch
        for event in held.values():
            if not _covered(event.position, cursor):
                self.send(event)

    def _write_snapshot(self, states: dict[str, UserState | None], cursor: Position | None) -> None:
        users: dict[str, object] = {}
        for userid in self.userids:
            if userid not in states:  # a resume: only those that changed
                continue
            state = states[userid]
            if self.clientid is None:
                users[userid] = None if state is None else state.as_status()
            else:
                view = None if state is None else state.view(self.clientid)
                users[userid] = None if view is None else view.as_status()
            if state is not None:
                view = state.view(self.clientid)
                if view is not None:
                    self.seen[userid] = view
        eid = str(cursor) if cursor is not None else _snapshot_id(self.seen.values())
        self._write_once(encode_frame({"users": users}, eid, "snapshot"))

    def _write_once(self, frame: bytes) -> None:
        """A frame only this stream sends (a snapshot, a batch); held back while paused."""
        self._write(Frame(frame))

    # Batches.

    def _schedule_batch(self) -> None:
        if self._batch_call is None and self.held is None and not self.closed:
            delay = max(0.0, self._next_batch - self._clock.seconds())
            self._batch_call = self._clock.callLater(delay, self._send_batch)

    def _send_batch(self) -> None:
        self._batch_call = None
        if not self.pending or self.closed or self.held is not None:
            return  # a paused stream's batch waits for it to resume
        events, self.pending = list(self.pending.values()), {}
        last = events[-1]
        eid = str(last.position) if last.position is not None else event_id(last.change)
        body = {"changes": [event.change.as_event() for event in events]}
        self._write_once(encode_frame(body, eid, "batch"))
        self._next_batch = self._clock.seconds() + self.options.batch

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if self.pending:
            self._schedule_batch()

    def _stop_batches(self) -> None:
        self.pending = {}
        if self._batch_call is not None and self._batch_call.active():
            self._batch_call.cancel()
        self._batch_call = None

    def connectionLost(self, reason: Failure) -> None:
        self._stop_batches()
        super().connectionLost(reason)

    def close(self, retry_ms: int | None = None) -> Deferred[None]:
        self._stop_batches()
        return super().close(retry_ms)


def _snapshot_id(views: Collection[Presence]) -> str:
    """A snapshot's id on a store without a feed: the newest of its views' ids."""
    newest = max(views, key=lambda view: view.time, default=None)
    return "0-snapshot" if newest is None else event_id(newest)


async def opening_state(
    store: HubStore, feed: ChangeFeed | None, stream: OptionStream,
) -> tuple[dict[str, UserState | None], Position | None]:
    """The current state to send ``stream`` first, and the feed position it is as of.

    The position is read before the state, so the state includes every
    change up to it (as ``/status`` and its cursor). A ``changes=only``
    stream resuming from a position still kept gets only its users that
    changed since (on a device stream: whose device went online or
    offline); one from a position no longer kept, or from an id that is
    no position, gets them all.
    """
    cursor = None if feed is None else await feed.position()
    userids: Collection[str] = stream.userids
    after = stream.resume_point()
    if feed is not None and cursor is not None and after is not None:
        try:
            userids = await _changed_since(feed, after, cursor, stream.userids, stream.clientid)
        except PositionGone:
            pass
    states = await store.get(userids) if userids else {}
    return states, cursor


async def _changed_since(feed: ChangeFeed, after: Position, cursor: Position,
                         userids: tuple[str, ...], clientid: str | None) -> list[str]:
    """Which of ``userids`` changed (their view: ``clientid``'s, or the user's) after
    ``after``, up to ``cursor`` at least (a later change comes live as well).

    Pages are read until one ends at or past ``cursor``: a page filtered by
    user may hold fewer than asked while more follow (the Redis feed's).
    """
    changed: dict[str, None] = {}
    while True:
        page = await feed.changes(after, RESUME_PAGE, userids)
        for change in page.changes:
            if change.clientid == clientid:
                changed[change.userid] = None
        if _covered(cursor, page.next) or page.next == after:
            return [userid for userid in userids if userid in changed]
        after = page.next
