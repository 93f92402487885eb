"""The hub: per user, the open streams watching them, fed by the store's bus."""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredList, gatherResults, succeed
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from heartbeat.presence import Ping
from heartbeat.sse import Event, Stream
from heartbeat.store import Store

log = Logger()


class _Interest:
    """The local streams of one user, and whether the bus delivers to us yet."""

    __slots__ = ("streams", "subscribed", "_waiting")

    def __init__(self, subscribing: Deferred[None]) -> None:
        self.streams: set[Stream] = set()
        self.subscribed = False
        self._waiting: list[Deferred[None]] = []
        subscribing.addErrback(self._failed).addCallback(self._ready)

    def _failed(self, failure: Failure) -> None:
        # The store resubscribes and resyncs when it comes back.
        log.failure("subscribe failed", failure, log_level=LogLevel.warn)

    def _ready(self, _: object) -> None:
        self.subscribed = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def when_subscribed(self) -> Deferred[None]:
        if self.subscribed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d


class Hub:
    """Routes each ping from the bus to the streams watching its user.

    The hub, not the store, knows which users have local watchers: it asks the
    store to subscribe when a user's first stream opens and to unsubscribe
    when the last closes, so the bus carries only pings someone here needs.
    """

    def __init__(self, store: Store) -> None:
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

    def attach(self, stream: Stream) -> Deferred[None]:
        """Register ``stream`` and send it each user's stored ping.

        Subscribing comes before reading the stored pings, so a ping stored in
        between is delivered live rather than missed; fires when the stored
        pings are sent.
        """
        self.streams.add(stream)
        stream.ends = self
        waits = []
        for userid in stream.userids:
            interest = self._interest.get(userid)
            if interest is None:
                interest = _Interest(self._store.subscribe(userid))
                self._interest[userid] = interest
            interest.streams.add(stream)
            if not interest.subscribed:
                waits.append(interest.when_subscribed())
        if waits:
            d = gatherResults(waits)
            d.addCallback(lambda _: self._store.get(stream.userids))
        else:  # the usual case, a user already watched here: no waiting to set up
            d = self._store.get(stream.userids)
        d.addCallback(self._send_stored, stream)
        d.addErrback(self._stored_failed)
        return d

    def _send_stored(self, pings: dict[str, Ping | None], stream: Stream) -> None:
        for userid, ping in pings.items():
            # A live ping that got here first is at least as new.
            if ping is None or userid in stream.seen or stream.closed:
                continue
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
        event = Event(ping)
        streams = tuple(interest.streams)
        self.delivered += len(streams)
        for stream in streams:
            stream.send(event)

    def resync(self) -> Deferred[None]:
        """After a bus outage, send each stream what changed while it was down."""
        if not self._interest:
            return succeed(None)
        d = self._store.get(list(self._interest))
        d.addCallback(self._send_changed)
        d.addErrback(self._stored_failed)
        return d

    def _send_changed(self, pings: dict[str, Ping | None]) -> None:
        for userid, ping in pings.items():
            interest = self._interest.get(userid)
            if ping is None or interest is None:
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


