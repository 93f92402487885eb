"""The hub: per user, the open streams watching them, fed by the store's bus."""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from heartbeat.core.feed import Feed
from heartbeat.core.presence import Ping
from heartbeat.core.sse import Event
from heartbeat.core.stream import Stream

log = Logger()


class _Interest:
    """One user's local streams, and the newest ping of theirs this process knows.

    The stored ping is read once, after the bus subscription is in effect;
    from then on the bus brings every newer one, so a stream opening later
    is sent ``latest`` without a store round trip. In a reconnect burst
    that is one read per user instead of one per stream.
    """

    __slots__ = ("streams", "subscribed", "loading", "loaded", "latest", "deliveries", "waiting")

    def __init__(self) -> None:
        self.streams: set[Stream] = set()
        self.subscribed = False
        self.loading = False
        # Whether ``latest`` is known to be current (read, then kept by the bus).
        self.loaded = False
        self.latest: Ping | None = None
        # Pings delivered so far: a read that crossed one is older than it.
        self.deliveries = 0
        # Streams opened before ``latest`` was known, to send it to then.
        self.waiting: list[Stream] = []


class Hub:
    """Routes each ping from the bus to the streams watching its user.

    The hub, not the store, knows which users have local watchers: it asks the
    store to subscribe when a user's first stream opens and to unsubscribe
    when the last closes, so the bus carries only pings someone here needs.
    """

    def __init__(self, store: Feed) -> None:
        self._store = store
        store.listener = self
        self._interest: dict[str, _Interest] = {}
        self.streams: set[Stream] = set()
        # Plain counts for /metrics, read when scraped: an addition per ping
        # fanned out is all they cost here.
        self.delivered = 0
        self.keepalives_sent = 0

    @property
    def users(self) -> int:
        return len(self._interest)

    def attach(self, stream: Stream) -> None:
        """Register ``stream`` and send it each user's stored ping.

        Subscribing comes before reading the stored ping, so a ping stored in
        between is delivered live rather than missed.
        """
        self.streams.add(stream)
        stream.ends = self
        for userid in stream.userids:
            interest = self._interest.get(userid)
            if interest is None:
                interest = self._interest[userid] = _Interest()
                subscribing = self._store.subscribe(userid).addErrback(_subscribe_failed)
                subscribing.addCallback(self._subscribed, userid, interest)
            interest.streams.add(stream)
            if interest.loaded:
                self._send_stored(stream, interest.latest)
            else:
                interest.waiting.append(stream)
                if interest.subscribed and not interest.loading:
                    self._load(userid, interest)

    def _subscribed(self, _: object, userid: str, interest: _Interest) -> None:
        interest.subscribed = True
        if not interest.loading:
            self._load(userid, interest)

    def _load(self, userid: str, interest: _Interest) -> None:
        interest.loading = True
        self._store.get((userid,)).addCallbacks(
            self._loaded, self._load_failed,
            (userid, interest, interest.deliveries), None, (interest,),
        )

    def _loaded(
        self, pings: dict[str, Ping | None], userid: str, interest: _Interest, deliveries: int
    ) -> None:
        interest.loading = False
        self._learn(interest, pings[userid], deliveries)

    def _load_failed(self, failure: Failure, interest: _Interest) -> None:
        # The streams wait for the store's resync, which reads every user.
        interest.loading = False
        self._stored_failed(failure)

    def _learn(self, interest: _Interest, stored: Ping | None, deliveries: int) -> None:
        """``stored`` was read when ``deliveries`` pings had come: send it to
        every stream that has not seen the user, unless a ping came since."""
        if interest.deliveries == deliveries:
            interest.latest = stored
        interest.loaded = True
        waiting, interest.waiting = interest.waiting, []
        for stream in waiting:
            self._send_stored(stream, interest.latest)

    def _send_stored(self, stream: Stream, ping: Ping | None) -> None:
        # A live ping that got here first is at least as new.
        if ping is None or ping.userid in stream.seen or stream.closed:
            return
        if not stream.skip_resumed(ping):
            stream.send(Event(ping))
            self.delivered += 1

    def _stored_failed(self, failure: Failure) -> None:
        log.failure("reading stored pings failed", failure, log_level=LogLevel.warn)

    def detach(self, stream: Stream) -> None:
        """Forget ``stream``; unsubscribe users nobody here watches any more."""
        if stream not in self.streams:
            return
        self.streams.discard(stream)
        for userid in stream.userids:
            interest = self._interest[userid]
            interest.streams.discard(stream)
            if not interest.streams:
                del self._interest[userid]
                self._store.unsubscribe(userid).addErrback(
                    lambda f: log.failure("unsubscribe failed", f, log_level=LogLevel.warn)
                )

    def deliver(self, ping: Ping) -> None:
        interest = self._interest.get(ping.userid)
        if interest is None:
            return
        interest.latest = ping
        interest.deliveries += 1
        event = Event(ping)
        streams = tuple(interest.streams)
        self.delivered += len(streams)
        for stream in streams:
            stream.send(event)

    def bus_lost(self) -> None:
        """Pings may go unheard until ``resync``: streams opening meanwhile
        read the store rather than what the bus last said."""
        for interest in self._interest.values():
            interest.loaded = False

    def resync(self) -> Deferred[None]:
        """After a bus outage, send each stream what changed while it was down."""
        if not self._interest:
            return succeed(None)
        deliveries = {userid: i.deliveries for userid, i in self._interest.items()}
        d = self._store.get(list(self._interest))
        d.addCallback(self._send_changed, deliveries)
        d.addErrback(self._stored_failed)
        return d

    def _send_changed(self, pings: dict[str, Ping | None], deliveries: dict[str, int]) -> None:
        for userid, ping in pings.items():
            interest = self._interest.get(userid)
            if interest is None:
                continue
            # A live ping that came meanwhile is as new as the read, and sent.
            current = interest.deliveries == deliveries[userid]
            self._learn(interest, ping, deliveries[userid])
            if ping is None or not current:
                continue
            event = Event(ping)
            for stream in tuple(interest.streams):
                if stream.seen.get(userid) != ping:
                    stream.send(event)
                    self.delivered += 1

    def keepalive(self) -> None:
        streams = tuple(self.streams)
        self.keepalives_sent += len(streams)
        for stream in streams:
            stream.comment()

    def close_all(self) -> Deferred[object]:
        """End every open stream cleanly, as at shutdown; fires when all are gone."""
        return DeferredList([stream.close() for stream in tuple(self.streams)])




def _subscribe_failed(failure: Failure) -> None:
    # The store resubscribes and resyncs when it comes back.
    log.failure("subscribe failed", failure, log_level=LogLevel.warn)
