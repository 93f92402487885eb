"""The hub: per user and device, the open streams watching them, fed by the store's bus."""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from heartbeat.core.changes import ChangeFeed, Position, visibly_changed
from heartbeat.core.deadlines import Deadlines
from heartbeat.core.holder import PresenceHolder
from heartbeat.core.presence import Presence, UserState
from heartbeat.core.quiet import OptionStream, opening_state
from heartbeat.core.sse import Event
from heartbeat.core.store_contract import HubStore
from heartbeat.core.stream import Stream

log = Logger()


class _Interest:
    """One user's local streams, and the newest state of theirs this process knows.

    The stored state is read once, after the bus subscription is in effect;
    from then on the bus brings every change, so a stream opening later is
    sent the user's (or its device's) view without a store round trip. In a
    reconnect burst that is one read per user instead of one per stream.
    """

    __slots__ = (
        "streams", "device_streams", "subscribed", "loading", "loaded", "user", "devices",
        "deliveries", "waiting", "quiet", "when_subscribed",
    )

    def __init__(self) -> None:
        # The user's streams, and apart from them each device's, so a
        # user's change fans out without looking at device streams.
        self.streams: set[Stream] = set()
        self.device_streams: dict[str, set[Stream]] = {}
        self.subscribed = False
        self.loading = False
        # Whether ``user`` and ``devices`` are known to be current (read,
        # then kept by the bus).
        self.loaded = False
        self.user: Presence | None = None
        self.devices: dict[str, Presence] = {}
        # Changes delivered so far: a read that crossed one is older than it.
        self.deliveries = 0
        # Streams opened before the state was known, to send it to then.
        self.waiting: list[Stream] = []
        # The ``changes=only`` streams, by device (None: the user's): sent
        # only the changes the store found visible, nothing else.
        self.quiet: dict[str | None, set[Stream]] = {}
        # Streams with options wait for the subscription before reading.
        self.when_subscribed: list[Deferred[None]] = []

    def view_of(self, clientid: str | None) -> Presence | None:
        return self.user if clientid is None else self.devices.get(clientid)

    def view(self, stream: Stream) -> Presence | None:
        clientid = stream.clientid
        return self.user if clientid is None else self.devices.get(clientid)

    def watchers(self, stream: Stream) -> set[Stream]:
        if stream.options.changes_only:
            return self.quiet.setdefault(stream.clientid, set())
        if stream.clientid is None:
            return self.streams
        return self.device_streams.setdefault(stream.clientid, set())

    def all_streams(self) -> tuple[Stream, ...]:
        return (*self.streams, *(s for group in self.device_streams.values() for s in group),
                *(s for group in self.quiet.values() for s in group))

    def forget(self, stream: Stream) -> None:
        """Take ``stream`` out of its watchers (and an emptied device's or quiet group)."""
        watchers = self.watchers(stream)
        watchers.discard(stream)
        if watchers:
            return
        if stream.options.changes_only:
            del self.quiet[stream.clientid]
        elif stream.clientid is not None:
            del self.device_streams[stream.clientid]

    @property
    def watched(self) -> bool:
        return bool(self.streams or self.device_streams or self.quiet)

    def learn(self, state: UserState | None) -> None:
        self.user = None if state is None else state.user
        self.devices = {} if state is None else dict(state.devices)


def _expire(stream: Stream) -> None:
    if not stream.closed:
        stream.expire()


class Hub:
    """Routes each change from the bus to the streams watching its user or device.

    The hub, not the store, knows which users have local watchers: it asks the
    store to subscribe when a user's first stream opens and to unsubscribe
    when the last closes, so the bus carries only changes someone here needs.
    """

    def __init__(self, store: HubStore, clock: IReactorTime,
                 feed: ChangeFeed | None = None, *, positions: bool = False,
                 holder: PresenceHolder | None = None, keepalive: float | None = None) -> None:
        self._store = store
        # The change feed, if the store keeps one: ``changes=only`` streams'
        # ids and resume points are its positions.
        self.feed = feed
        # Whether the store's bus hands each change's feed position with it
        # (the in-process stores; the Redis bus says so per message, ``judged``);
        # else the hub finds the changes itself.
        self._positions = positions
        store.listener = self
        # Keeps the devices of presence streams online (None: no presence streams).
        self.holder = holder
        self._interest: dict[str, _Interest] = {}
        self.streams: set[Stream] = set()
        # The open streams of each user whose credentials opened them.
        self._owned: dict[str, set[Stream]] = {}
        # Streams opened with a token that has ``exp`` end then (SPEC §1), so a
        # client reads only while it holds a valid token.
        self._expiry: Deadlines[Stream] = Deadlines(clock, _expire)
        # Each stream's next keep-alive comment, ``keepalive`` seconds after the
        # last (None: none sent). Per stream on the wheel, not all streams at
        # one tick: one turn writing to every stream stalls every ping behind it.
        self._keepalive = keepalive
        self._keepalives: Deadlines[Stream] = Deadlines(
            clock, self._keepalive_due, min(1.0, keepalive or 1.0))
        # Plain counts for /metrics, read when scraped: an addition per ping
        # fanned out is all they cost here.
        self.delivered = 0
        self.keepalives_sent = 0

    @property
    def users(self) -> int:
        return len(self._interest)

    def attach(self, stream: Stream, expires: float | None = None) -> None:
        """Register ``stream`` and send it each user's stored state; end it at
        ``expires`` (the clock's seconds) if given.

        Subscribing comes before reading the stored state, so a change stored
        in between is delivered live rather than missed.
        """
        self.streams.add(stream)
        stream.ends = self
        if stream.owner is not None:
            self._owned.setdefault(stream.owner, set()).add(stream)
        if expires is not None:
            self._expiry.arm_at(stream, expires)
        if self._keepalive is not None:
            self._keepalives.arm(stream, self._keepalive)
        if stream.presence is not None and self.holder is not None:
            self.holder.opened(stream.presence)
        plain = stream.options.plain
        interests = []
        for userid in stream.userids:
            interest = self._interest.get(userid)
            if interest is None:
                interest = self._interest[userid] = _Interest()
                subscribing = self._store.subscribe(userid).addErrback(_subscribe_failed)
                subscribing.addCallback(self._subscribed, userid, interest)
            interest.watchers(stream).add(stream)
            if not plain:
                interests.append(interest)
            elif interest.loaded:
                self._send_stored(stream, interest.view(stream))
            else:
                interest.waiting.append(stream)
                if interest.subscribed and not interest.loading:
                    self._load(userid, interest)
        if isinstance(stream, OptionStream):
            self._open(stream, interests)

    def _open(self, stream: OptionStream, interests: list[_Interest]) -> None:
        """Send ``stream`` its current state once every user's subscription is in effect."""
        waits = []
        for interest in interests:
            if not interest.subscribed:
                waiting: Deferred[None] = Deferred()
                interest.when_subscribed.append(waiting)
                waits.append(waiting)
        d = gatherResults(waits) if waits else succeed(None)
        d.addCallback(lambda _: ensureDeferred(opening_state(self._store, self.feed, stream)))
        d.addCallbacks(self._opened, self._open_failed, (stream,), {}, (stream,))

    def _opened(self, state: tuple[dict[str, UserState | None], Position | None],
                stream: OptionStream) -> None:
        states, cursor = state
        stream.opened(states, cursor)
        self.delivered += sum(state is not None for state in states.values())

    def _open_failed(self, failure: Failure, stream: OptionStream) -> None:
        # Its client reconnects (and resumes) once the store answers again.
        self._stored_failed(failure)
        stream.close()

    def _subscribed(self, _: object, userid: str, interest: _Interest) -> None:
        interest.subscribed = True
        waiting, interest.when_subscribed = interest.when_subscribed, []
        for d in waiting:
            d.callback(None)
        if not interest.loading:
            self._load(userid, interest)

    def _load(self, userid: str, interest: _Interest) -> None:
        interest.loading = True
        self._store.get((userid,)).addCallbacks(
            self._loaded, self._load_failed,
            (userid, interest, interest.deliveries), {}, (interest,),
        )

    def _loaded(
        self, states: dict[str, UserState | None], userid: str, interest: _Interest,
        deliveries: int,
    ) -> None:
        interest.loading = False
        self._learn(interest, states[userid], deliveries)

    def _load_failed(self, failure: Failure, interest: _Interest) -> None:
        # The streams wait for the store's resync, which reads every user.
        interest.loading = False
        self._stored_failed(failure)

    def _learn(self, interest: _Interest, stored: UserState | None, deliveries: int) -> None:
        """``stored`` was read when ``deliveries`` changes had come: send it to
        every stream that has not seen the user, unless a change came since."""
        if interest.deliveries == deliveries:
            interest.learn(stored)
        interest.loaded = True
        waiting, interest.waiting = interest.waiting, []
        for stream in waiting:
            self._send_stored(stream, interest.view(stream))

    def _send_stored(self, stream: Stream, change: Presence | None) -> None:
        # A live change that got here first is at least as new.
        if change is None or change.userid in stream.seen or stream.closed:
            return
        if not stream.skip_resumed(change):
            stream.send(Event(change))
            self.delivered += 1

    def _stored_failed(self, failure: Failure) -> None:
        log.failure("reading stored presence failed", failure, level=LogLevel.warn)

    def detach(self, stream: Stream) -> None:
        """Forget ``stream``; unsubscribe users nobody here watches any more."""
        if stream not in self.streams:
            return
        self.streams.discard(stream)
        owned = self._owned.get(stream.owner) if stream.owner is not None else None
        if owned is not None:
            owned.discard(stream)
            if not owned:
                del self._owned[stream.owner]  # type: ignore[arg-type]
        self._expiry.disarm(stream)
        self._keepalives.disarm(stream)
        if stream.presence is not None and self.holder is not None:
            self.holder.closed(stream.presence)
        for userid in stream.userids:
            interest = self._interest[userid]
            interest.forget(stream)
            if not interest.watched:
                del self._interest[userid]
                self._store.unsubscribe(userid).addErrback(
                    lambda f: log.failure("unsubscribe failed", f, level=LogLevel.warn)
                )

    def deliver(self, change: Presence, position: Position | None = None,
                judged: bool | None = None) -> None:
        interest = self._interest.get(change.userid)
        if interest is None:
            return
        interest.deliveries += 1
        if change.erased:
            # Every stream of the user hears it (device and changes=only
            # streams too); nothing of theirs is known any more.
            interest.learn(None)
            quiet_streams = tuple(s for group in interest.quiet.values() for s in group)
            plain = tuple(s for s in interest.all_streams() if s not in quiet_streams)
            self._fan_out(Event(change), plain)
            if quiet_streams:
                self._fan_out(Event(change, position), quiet_streams)
            return
        quiet = interest.quiet
        before = interest.view_of(change.clientid) if quiet else None
        if change.clientid is None:
            interest.user = change
            watching: set[Stream] | None = interest.streams
        else:
            interest.devices[change.clientid] = change
            watching = interest.device_streams.get(change.clientid)
        if quiet:
            self._deliver_quiet(interest, before, change, position,
                                self._positions if judged is None else judged)
        if watching:
            self._fan_out(Event(change), tuple(watching))

    def _fan_out(self, event: Event, streams: tuple[Stream, ...]) -> None:
        self.delivered += len(streams)
        for stream in streams:
            stream.send(event)

    def disconnect(self, userid: str) -> None:
        """End every stream opened here with ``userid``'s credentials."""
        for stream in tuple(self._owned.get(userid, ())):
            stream.close()

    def _deliver_quiet(self, interest: _Interest, before: Presence | None, change: Presence,
                       position: Position | None, judged: bool) -> None:
        """A change the store found visible (it gave its feed position): to the
        ``changes=only`` streams of its view.

        A change the store did not judge (another service's message on the
        Redis bus, or a Cluster's heard before its feed's epoch was read): the
        same rule is applied here, once per change, to what the bus said last.
        """
        quiet = interest.quiet.get(change.clientid)
        if not quiet:
            return
        if position is None and (judged or not visibly_changed(before, change)):
            return
        self._fan_out(Event(change, position), tuple(quiet))

    def bus_lost(self) -> None:
        """Changes may go unheard until ``resync``: streams opening meanwhile
        read the store rather than what the bus last said."""
        for interest in self._interest.values():
            interest.loaded = False

    def resync(self) -> Deferred[None]:
        """After a bus outage, send each stream what changed while it was down.

        With a feed, its position is read before the state, as a stream's
        opening does: a ``changes=only`` stream's events then carry it, so
        its client resumes from a position even after the outage.
        """
        if not self._interest:
            return succeed(None)
        deliveries = {userid: i.deliveries for userid, i in self._interest.items()}
        d = ensureDeferred(self._read_all())
        sent = d.addCallback(lambda read: self._send_changed(read[0], read[1], deliveries))
        return sent.addErrback(self._stored_failed)

    async def _read_all(self) -> tuple[dict[str, UserState | None], Position | None]:
        cursor = None if self.feed is None else await self.feed.position()
        return await self._store.get(list(self._interest)), cursor

    def _send_changed(
        self, states: dict[str, UserState | None], cursor: Position | None,
        deliveries: dict[str, int],
    ) -> None:
        for userid, state in states.items():
            interest = self._interest.get(userid)
            if interest is None:
                continue
            # A live change that came meanwhile is as new as the read, and sent.
            current = interest.deliveries == deliveries[userid]
            self._learn(interest, state, deliveries[userid])
            if not current:
                continue
            if state is None:
                self._send_gone(userid, interest)
                continue
            # One frame per view, however many streams want it.
            events: dict[str | None, Event | None] = {}
            for stream in interest.all_streams():
                clientid = stream.clientid
                if clientid not in events:
                    view = state.view(clientid)
                    events[clientid] = None if view is None else Event(view)
                event = events[clientid]
                if event is None or stream.seen.get(userid) == event.change:
                    continue
                if stream.options.changes_only:
                    # Only a visible change, its id the position the state was read at.
                    if not visibly_changed(stream.seen.get(userid), event.change):
                        continue
                    event = Event(event.change, cursor)
                stream.send(event)
                self.delivered += 1

    def _send_gone(self, userid: str, interest: _Interest) -> None:
        """The store no longer has ``userid`` (a Redis back without its data): each
        stream that last saw them online is told they are offline, once, with the
        ``time`` and ``status`` it was sent, so nobody shows online for ever."""
        for stream in interest.all_streams():
            seen = stream.seen.get(userid)
            if seen is not None and seen.online:
                stream.send(Event(replace(seen, online=False)))
                self.delivered += 1

    def _keepalive_due(self, stream: Stream) -> None:
        self.keepalives_sent += 1
        stream.comment()
        if self._keepalive is not None:
            self._keepalives.arm(stream, self._keepalive)

    def close_all(self) -> Deferred[object]:
        """End every open stream cleanly, as at shutdown; fires when all are gone."""
        closing = DeferredList([stream.close() for stream in tuple(self.streams)])
        return closing.addCallback(lambda _: None)


def _subscribe_failed(failure: Failure) -> None:
    # The store resubscribes and resyncs when it comes back.
    log.failure("subscribe failed", failure, level=LogLevel.warn)
