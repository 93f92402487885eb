"""An open event stream: what it watches, what it was sent, and its connection."""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from heartbeat.core.presence import Ping, Presence
from heartbeat.core.sse import KEEPALIVE, Event, Frame, event_id
from heartbeat.core.stream_options import PLAIN, StreamOptions

log = Logger()


class StreamTransport(Protocol):
    """What a stream writes to: its connection, which frames what it sends
    for its protocol (the web layer's edge connection)."""

    def send(self, frame: Frame) -> None:
        """Write ``frame`` (its ``wire`` form, made once for every stream)."""

    def end(self) -> None:
        """End the response cleanly, so the client sees the stream end, then close."""

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def abortConnection(self) -> None: ...


class Ends(Protocol):
    """Who hears that a stream's connection is gone (the hub)."""

    def detach(self, stream: Stream) -> None: ...


@implementer(IPushProducer)
class Stream:
    """One open ``text/event-stream`` response, watching one or more users.

    A device stream (``clientid`` set) watches one user's one device and
    is sent only that device's changes; every other stream gets the users'.

    Once its headers are sent, the stream ``take``s the connection's
    transport: it writes its events there itself, pre-framed, and is the
    transport's producer. The connection's protocol tells it when the
    connection is lost.

    The stream is the push producer of its connection, so a client that
    stops reading pauses it once the transport's buffer is full. While
    paused it writes nothing and holds only the newest event of each of its
    users (a watcher wants the current presence, not the history), so its
    memory is bounded by its number of users; a stream paused for longer
    than ``blocked_timeout`` seconds is cut off. When not paused, ``send``
    is a plain write: fan-out stays cheap.

    A presence stream (``presence``: the ping its opening is) also holds
    its own device online while it is open (:mod:`heartbeat.core.holder`).
    """

    __slots__ = (
        "userids", "clientid", "owner", "last_event_id", "seen", "closed", "held", "transport",
        "ends", "presence", "_clock", "_blocked_timeout", "_blocked", "_gone", "_lost",
    )
    # A stream with options is a :class:`heartbeat.core.quiet.OptionStream`.
    options: StreamOptions = PLAIN

    def __init__(
        self,
        userids: tuple[str, ...],
        clock: IReactorTime,
        blocked_timeout: float,
        last_event_id: bytes | None = None,
        clientid: str | None = None,
        owner: str | None = None,
        presence: Ping | None = None,
    ) -> None:
        self.userids = userids
        self.clientid = clientid
        # Whose credentials opened it (None: no user's), so a logout or an
        # erasure of that user can end it.
        self.owner = owner
        self.presence = presence
        # What a reconnecting browser says it saw last (``Last-Event-ID``).
        self.last_event_id = last_event_id
        # The last change this stream was sent per user, to resend only what
        # it missed after the bus comes back.
        self.seen: dict[str, Presence] = {}
        self.closed = False
        # None while the client reads; while paused, the newest event per user.
        self.held: dict[str, Event] | None = None
        self.transport: StreamTransport | None = None
        self.ends: Ends | None = None
        self._clock = clock
        self._blocked_timeout = blocked_timeout
        self._blocked: IDelayedCall | None = None
        # Made only when someone waits for the connection to go (shutdown).
        self._gone: Deferred[None] | None = None
        self._lost = False

    def take(self, transport: StreamTransport) -> None:
        """Write to ``transport`` from now on, as its producer; the headers are sent."""
        self.transport = transport
        transport.registerProducer(self, True)

    def skip_resumed(self, change: Presence) -> bool:
        """Whether the client already has ``change``, by its ``Last-Event-ID``.

        A browser keeps only the last id it saw, so this spares at most one
        user's stored state on reconnect; that state counts as seen.
        """
        if self.last_event_id != event_id(change).encode("ascii"):
            return False
        self.seen[change.userid] = change
        return True

    def send(self, event: Event) -> None:
        change = event.change
        self.seen[change.userid] = change
        if self.held is None:
            self._write(event)
        else:
            self.held[change.userid] = event

    def comment(self) -> None:
        # A blocked client needs no keep-alive: its connection is not idle.
        if self.held is None:
            self._write(KEEPALIVE)

    def _write(self, frame: Frame) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            transport.send(frame)

    # Told by the connection's protocol.

    def connectionLost(self, reason: Failure) -> None:
        self._lost = self.closed = True
        self._cancel_blocked()
        self.held = None
        if self.ends is not None:
            self.ends.detach(self)
        if self._gone is not None:
            self._gone.callback(None)

    # The connection's producer.

    def pauseProducing(self) -> None:
        if self.held is None and not self.closed:
            self.held = {}
            self._blocked = self._clock.callLater(self._blocked_timeout, self._cut_off)

    def resumeProducing(self) -> None:
        if self.held is None:
            return
        held, self.held = self.held, None
        self._cancel_blocked()
        for event in held.values():
            self._write(event)

    def stopProducing(self) -> None:
        """The connection is going: keep nothing more for it."""
        self._cancel_blocked()
        self.held = {}

    def _cut_off(self) -> None:
        """Blocked too long: drop the connection, its buffered bytes with it.

        A clean end would only queue behind the bytes the client is not
        reading; aborting frees them now, and the hub hears of it through
        ``connectionLost``.
        """
        self._blocked = None
        log.info("closing a stream blocked for {seconds}s", seconds=self._blocked_timeout)
        self.closed = True
        self.held = {}
        if self.transport is not None:
            self.transport.abortConnection()

    def _cancel_blocked(self) -> None:
        if self._blocked is not None:
            if self._blocked.active():
                self._blocked.cancel()
            self._blocked = None

    def close(self, retry_ms: int | None = None) -> Deferred[None]:
        """End the response cleanly (the client sees the stream end).

        ``retry_ms``: first tell the client how long to wait before it
        reconnects (a draining instance spreads its clients' returns).
        Fires once the connection is gone, its last bytes flushed; the
        caller (shutdown) bounds the wait.
        """
        if self._gone is None:
            self._gone = Deferred()
            if self.transport is None or self._lost:
                self._gone.callback(None)
        transport = self.transport
        if not self.closed and transport is not None:
            self.closed = True
            self._cancel_blocked()
            if self.ends is not None:
                self.ends.detach(self)
            transport.unregisterProducer()
            if retry_ms is not None and self.held is None:
                transport.send(Frame(b"retry: %d\n" % retry_ms))
            transport.end()
        return self._gone

    def expire(self) -> None:
        """The token this stream was opened with has expired: end it now.

        A client that reads gets the clean end, and
        EventSource reconnects with the token it has now. One that is not
        reading would never take that end, and a closing stream no longer
        cuts off a blocked client, so its connection is dropped instead.
        """
        if self.held is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Shutdown's last resort for a client that stopped reading."""
        if self.transport is not None:
            self.transport.abortConnection()
