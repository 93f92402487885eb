"""One Redis connection that heals itself and says when it is usable.

txredisapi's factory already reconnects (through ``ClientService``) and does
``AUTH``/``SELECT`` before handing a connection out. What the store needs on
top is to *know* the connection state — to answer 503 at once instead of
queueing a ping behind a reconnect, and to resubscribe and resync when the
link comes back — so this factory reports each usable connection and each
loss to its owner, and caps the backoff low enough that a Redis restart costs
seconds, not minutes.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger
from txredisapi import RedisFactory, RedisProtocol, SubscriberProtocol

from heartbeat.store.redis.address import RedisAddress

log = Logger()

# Seconds to wait for a TCP connection before counting the attempt as failed:
# a black-holed Redis host must not stall reconnection for the OS default.
CONNECT_TIMEOUT = 3.0

# Told about a connection that became usable, or was lost.
ConnectionHook = Callable[[RedisProtocol], None]


class RedisLink(RedisFactory):
    """A single connection, kept open, that reports ``ready`` and ``lost``.

    Built with ``subscriber=True`` it is a pub/sub connection: no ``SELECT``
    (channels are server-wide) and each message goes to ``on_message``.
    """

    # Reconnect after 0.2 s, doubling up to a 3 s cap (txredisapi adds jitter).
    initialDelay = 0.2
    factor = 2.0
    maxDelay = 3.0

    def __init__(
        self,
        address: RedisAddress,
        on_ready: ConnectionHook,
        on_lost: ConnectionHook,
        on_message: Callable[[str, str], None] | None = None,
        reply_timeout: float | None = None,
    ) -> None:
        subscriber = on_message is not None
        super().__init__(
            f"{address.host}:{address.port}",
            None if subscriber or address.db == 0 else address.db,
            1,
            isLazy=True,
            password=address.password,
            replyTimeout=reply_timeout,
            # Statuses like "0" must stay strings.
            convertNumbers=False,
        )
        self.protocol = _Subscriber if subscriber else RedisProtocol
        self.address = address
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.on_message = on_message

    def connect(self, reactor) -> None:  # type: ignore[no-untyped-def]
        """Start connecting, and keep reconnecting until ``disconnect``."""
        endpoint = HostnameEndpoint(
            reactor, self.address.host, self.address.port, timeout=CONNECT_TIMEOUT
        )
        self.startConnecting(endpoint)

    def addConnection(self, conn: RedisProtocol) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.on_ready(conn)

    def delConnection(self, conn: RedisProtocol) -> None:
        super().delConnection(conn)
        self.on_lost(conn)

    def connectionError(self, why: str) -> None:
        # A refused AUTH or SELECT: txredisapi has stopped retrying, since
        # retrying a wrong password cannot help. Say so loudly; the daemon
        # keeps answering 503 rather than dying.
        log.error("{why} (check the REDIS setting)", why=why)


class _Subscriber(SubscriberProtocol):
    """Hands each pub/sub message to the link's owner."""

    factory: RedisLink

    def messageReceived(self, pattern: str | None, channel: str, message: str) -> None:
        on_message = self.factory.on_message
        if on_message is not None:
            on_message(channel, message)
