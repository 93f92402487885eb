"""One Redis connection that heals itself, checks it is alive, and says when it is usable.

txredisapi's factory already reconnects (through ``ClientService``) and does
``AUTH``/``SELECT`` before handing a connection out. What the store needs on
top is to *know* the connection state — to answer 503 at once instead of
queueing a ping behind a reconnect, and to resubscribe and resync when the
link comes back — so this factory reports each usable connection and each
loss to its owner, and caps the backoff low enough that a Redis restart costs
seconds, not minutes.

It also adds what txredisapi lacks for a long-lived production connection:

- **liveness**: a connection quiet for ``QUIET`` seconds is sent a ``PING``
  (allowed in subscribed mode too); no reply within the reply timeout and the
  connection is dropped and made again. A half-open socket (a NAT entry
  dropped, a VM paused) is otherwise never noticed by a subscriber.
- **TLS** that is usable only once the handshake (certificate and host name
  verified) is done, so a bad certificate is a logged error, never a
  connection that looks up for a moment;
- **a route** (:class:`DirectRoute`, or Sentinel's) that picks the server on
  every attempt, and for Sentinel a ``ROLE`` check: a connection that lands on
  a replica is dropped and the master asked for again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from OpenSSL.SSL import Error as TLSError
from service_identity import VerificationError
from twisted.internet.defer import CancelledError, Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import (
    IHandshakeListener,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import RedisFactory, RedisProtocol, SubscriberProtocol
from zope.interface import implementer

from heartbeat.store.redis.address import RedisAddress, Server, where
from heartbeat.store.redis.tls import TrustRoot, client_tls
from heartbeat.store.redis.txredis import (
    disconnecting,
    pooled,
    slot_transport,
    stop_slot,
    take_slots,
)

log = Logger()

# Seconds to wait for a TCP connection before counting the attempt as failed:
# a black-holed Redis host must not stall reconnection for the OS default.
CONNECT_TIMEOUT = 3.0
# Seconds a connection may stay silent before it is sent a PING. With the
# reply timeout after it, a dead connection is dropped within QUIET + 1 +
# the reply timeout seconds of its last reply.
QUIET = 3.0

# Told about a connection that became usable, or was lost.
ConnectionHook = Callable[[RedisProtocol], None]


class Route(Protocol):
    """How a link reaches its server: asked again before every connection attempt."""

    # Whether the server must be a master (checked with ROLE on every connection).
    follows_master: bool

    def endpoint(self) -> IStreamClientEndpoint:
        """Where the next attempt connects."""

    def replica_found(self, where: str) -> None:
        """A connection found itself on a replica: the master has moved."""


def server_endpoint(reactor: Any, server: Server, tls: bool,
                    trust: TrustRoot | None) -> IStreamClientEndpoint:
    """TCP to ``server``, verified TLS over it when ``tls``."""
    host, port = server
    endpoint = HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
    return wrapClientTLS(client_tls(host, trust), endpoint) if tls else endpoint


class DirectRoute:
    """One server, always the same (``host:port``, ``redis://``, ``rediss://``)."""

    follows_master = False

    def __init__(self, reactor: Any, address: RedisAddress,
                 trust: TrustRoot | None) -> None:
        self._endpoint = server_endpoint(reactor, (address.host, address.port), address.tls, trust)

    def endpoint(self) -> IStreamClientEndpoint:
        return self._endpoint

    def replica_found(self, where: str) -> None:
        """Nowhere else to go: the refused writes say so (503s, logged)."""

    # Nothing moves, so there is nothing to follow or to listen for.
    failovers = 0
    watchers: list[RedisLink] = []

    def follow(self, link: RedisLink) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> Deferred[None]:
        return succeed(None)


class RedisLink(RedisFactory):
    """A single connection, kept open, that reports ``ready`` and ``lost``.

    ``clock`` is the reactor its liveness checks run on. Built with
    ``on_message`` it is a pub/sub connection: no ``SELECT``
    (channels are server-wide) and each message goes to ``on_message``.
    ``name`` says which connection it is in logs and metrics.
    """

    # Reconnect after 0.2 s, doubling up to a 3 s cap (txredisapi adds jitter).
    initialDelay = 0.2
    factor = 2.0
    maxDelay = 3.0

    def __init__(
        self,
        route: Route,
        address: RedisAddress,
        on_ready: ConnectionHook,
        on_lost: ConnectionHook,
        on_message: Callable[[str, str], None] | None = None,
        reply_timeout: float = 5.0,
        name: str = "commands",
        *,
        clock: IReactorTime,
    ) -> None:
        subscriber = on_message is not None
        super().__init__(
            None,
            None if subscriber or address.db == 0 else address.db,
            1,
            isLazy=True,
            password=address.password,
            username=address.username,
            replyTimeout=reply_timeout,
            # Statuses like "0" must stay strings.
            convertNumbers=False,
        )
        # Its own timers (liveness) and times run on the reactor it is given.
        self.clock = clock
        self.protocol = _Subscriber if subscriber else _Commands
        self.route = route
        self.name = name
        self.tls = address.tls
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.on_message = on_message
        # PINGs that went unanswered, each costing the connection.
        self.liveness_failures = 0
        self._problem: str | None = None
        self._checks: dict[RedisProtocol, Liveness] = {}

    def connect(self) -> None:
        """Start connecting, and keep reconnecting until ``disconnect``."""
        self.startConnecting(_Reported(self))

    def reconnect_now(self) -> None:
        """Drop the connection and connect again at once, past any backoff.

        For a master that moved: the old one is dead or a replica, and the
        backoff that the dead one built up must not delay reaching the new.
        """
        slots = take_slots(self)
        for slot in slots:
            transport = slot_transport(slot)
            if transport is not None:
                transport.abortConnection()  # type: ignore[attr-defined]
        stopped = gatherResults([stop_slot(slot) for slot in slots], consumeErrors=True)
        stopped.addBoth(lambda _: None if disconnecting(self) else self.connect())

    def on(self, where: str) -> bool:
        """Whether the connection is up, to the server at ``where``."""
        return any(peer(conn) == where for conn in pooled(self))

    def addConnection(self, conn: RedisProtocol) -> None:
        """Hand ``conn`` out once the server has answered on it.

        An open port is not a working server: a proxy may accept and never
        forward, a Redis still loading answers ``-LOADING``. So the server
        is asked first: ``ROLE`` when it must be the master, else ``PING``.
        """
        if not conn.connected:
            super().addConnection(conn)  # gone already: txredisapi drops it
            return
        d = conn.role() if self.route.follows_master else conn.ping()
        d.addCallbacks(self._answered, self._unready, (conn,), None, (conn,))

    def _unready(self, failure: Failure, conn: RedisProtocol) -> None:
        if conn.connected:
            self.problem(f"{peer(conn)} is not ready: {failure.getErrorMessage()}")
            conn.transport.abortConnection()

    def _answered(self, reply: object, conn: RedisProtocol) -> None:
        # A subscriber connection hands on the last three items of a list
        # reply; a master's ROLE has exactly three, so its first is "master".
        if not self.route.follows_master or (isinstance(reply, list) and reply[:1] == ["master"]):
            self._usable(conn)
            return
        where = peer(conn)
        log.warn("redis {link} reached {where}, which is not the master: asking again",
                 link=self.name, where=where)
        conn.transport.abortConnection()
        self.route.replica_found(where)

    def _usable(self, conn: RedisProtocol) -> None:
        super().addConnection(conn)
        if conn in pooled(self):
            conn.usable = True
            self._problem = None
            check = Liveness(conn, self.clock, self._unanswered)
            self._checks[conn] = check
            check.start()
            self.on_ready(conn)

    def delConnection(self, conn: RedisProtocol) -> None:
        super().delConnection(conn)
        check = self._checks.pop(conn, None)
        if check is not None:
            check.stop()
            # A command's own reply timeout may drop a silent connection
            # before the PING's does (the presence sweep keeps it busy): that
            # is the same failure, counted once.
            timeout = self.replyTimeout
            if not check.fired and timeout and self.clock.seconds() - conn.heard >= timeout:
                self._unanswered(conn)
        self.on_lost(conn)

    def _unanswered(self, conn: RedisProtocol) -> None:
        self.liveness_failures += 1
        log.error("redis {link} at {where} did not answer a PING: dropping it (REDIS)",
                  link=self.name, where=peer(conn))

    def stopTrying(self) -> Deferred[None]:
        """Keep retrying, with backoff, after a refused ``AUTH`` or ``SELECT``.

        txredisapi gives up for good; but a password is fixed on the server
        (an ACL change) as often as in heartbeat's settings, and then the
        instance must come back without a restart.
        """
        return succeed(None)

    def connectionError(self, why: str) -> None:
        # A refused AUTH or SELECT: the daemon keeps answering 503 rather than dying.
        self.problem(f"{why} (check the REDIS setting)")

    def problem(self, text: str) -> None:
        """Log why the link cannot connect, once until it changes or the link is back."""
        if text != self._problem:
            self._problem = text
            log.error("redis {link}: {why}", link=self.name, why=text)

    def lost_unready(self, reason: Failure) -> None:
        """A connection closed before it became usable: say why, if it was TLS."""
        if reason.check(TLSError, VerificationError):
            self.problem(f"TLS with the server failed: {_tls_reason(reason)} "
                         "(check REDIS and REDIS_CA_FILE)")


def _tls_reason(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, TLSError) and value.args and isinstance(value.args[0], list):
        return "; ".join(item[-1] for item in value.args[0] if item) or "handshake failed"
    return str(value) or type(value).__name__


def peer(conn: RedisProtocol) -> str:
    """The server at the other end of ``conn``, named as :func:`~.address.where` names it."""
    peer = conn.transport.getPeer() if conn.transport is not None else None
    return where(peer.host, peer.port) if peer is not None and hasattr(peer, "port") else "?"


@implementer(IStreamClientEndpoint)
class _Reported:
    """The route's endpoint of the moment, with each failure to connect logged."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link

    def connect(self, factory: Any) -> Deferred[Any]:
        d = maybeDeferred(lambda: self._link.route.endpoint().connect(factory))
        return d.addErrback(self._failed)

    def _failed(self, failure: Failure) -> Failure:
        # A cancelled attempt is the link's own doing: stopping, or moving.
        if not failure.check(CancelledError, ConnectingCancelledError):
            why = str(failure.value) or failure.getErrorMessage()
            self._link.problem(f"cannot connect: {why} (check the REDIS setting)")
        return failure


class Liveness:
    """PINGs a connection quiet for ``QUIET`` seconds; aborts it if no reply comes in time.

    Its own timer, not txredisapi's reply timeout, so that it works the
    same on a subscriber connection (whose SUBSCRIBEs wait without one).
    """

    def __init__(self, conn: Any, clock: IReactorTime,
                 on_failure: Callable[[Any], None]) -> None:
        self._conn = conn
        self._clock = clock
        self._on_failure = on_failure
        self._loop = LoopingCall(self._check)
        self._loop.clock = clock
        self._waiting: Any = None
        self.fired = False

    def start(self) -> None:
        self._conn.heard = self._clock.seconds()
        self._loop.start(1.0, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._waiting is not None and self._waiting.active():
            self._waiting.cancel()

    def _check(self) -> None:
        if self._waiting is not None or self._clock.seconds() - self._conn.heard < QUIET:
            return
        self._waiting = self._clock.callLater(self._conn.factory.replyTimeout, self._dead)
        d = maybeDeferred(self._conn.execute_command, "PING", apply_timeout=False)
        d.addBoth(self._answered)

    def _answered(self, _: object) -> None:
        if self._waiting is not None and self._waiting.active():
            self._waiting.cancel()
            self._waiting = None

    def _dead(self) -> None:
        self.fired = True
        self._on_failure(self._conn)
        self._conn.transport.abortConnection()


class _Watched:
    """What both connection kinds add: when they last heard, TLS readiness."""

    factory: RedisLink
    heard = 0.0
    # Handed out by its link (the server answered on it).
    usable = False

    def connectionMade(self) -> Any:
        # Over TLS, AUTH and the "ready" report wait for a verified handshake.
        if self.factory.tls:
            return None
        return super().connectionMade()  # type: ignore[misc]

    def handshakeCompleted(self) -> Any:
        return super().connectionMade()  # type: ignore[misc]

    def dataReceived(self, *args: Any) -> Any:
        self.heard = self.factory.clock.seconds()
        return super().dataReceived(*args)  # type: ignore[misc]

    def connectionLost(self, why: Failure) -> Any:
        if not self.usable:
            self.factory.lost_unready(why)
        return super().connectionLost(why)  # type: ignore[misc]


@implementer(IHandshakeListener)
class _Commands(_Watched, RedisProtocol):
    """The command connection."""


@implementer(IHandshakeListener)
class _Subscriber(_Watched, SubscriberProtocol):
    """Hands each pub/sub message to the link's owner."""

    def messageReceived(self, pattern: str | None, channel: str, message: str) -> None:
        on_message = self.factory.on_message
        if on_message is not None:
            on_message(channel, message)
