"""Finding the master through Redis Sentinel, and following it when it moves.

txredisapi's ``Sentinel`` finds a master for command connections, but it
has nothing for a subscriber connection, no TLS, and hears of a failover only
when the old master's connection breaks. This route fills those gaps for
every link of the store alike:

- before each connection attempt the master is asked of the Sentinels, each
  in turn (``SENTINEL GET-MASTER-ADDR-BY-NAME``), and every link checks with
  ``ROLE`` that it reached a master (a replica sends it back to the Sentinels);
- a subscriber connection to each Sentinel listens for ``+switch-master``
  (each, because only the Sentinel that led the failover announces it at
  once; the others learn it up to seconds later); when it names our master,
  every link is dropped and reconnected at once to the promoted replica (the
  store then resubscribes and resyncs, and pings get 503 until the command
  link is back).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from txredisapi import ConnectionError as RedisConnectionError
from txredisapi import RedisProtocol
from zope.interface import implementer

from heartbeat.store.redis.address import RedisAddress, Server, where
from heartbeat.store.redis.link import DirectRoute, RedisLink, server_endpoint
from heartbeat.store.redis.tls import TrustRoot

log = Logger()

# The Sentinel channel announcing a new master: "<name> <old-ip> <old-port> <new-ip> <new-port>".
SWITCH_MASTER = "+switch-master"


class MasterNotFound(RedisConnectionError):
    """No Sentinel could say where the master is."""


def route_for(reactor: Any, address: RedisAddress,
              trust: TrustRoot | None) -> DirectRoute | SentinelRoute:
    """The route ``REDIS`` describes: one server, or a master found through Sentinel."""
    if address.kind == "sentinel":
        return SentinelRoute(reactor, address, trust)
    return DirectRoute(reactor, address, trust)


class SentinelRoute:
    """The master named in ``REDIS``, as the Sentinels say it is now.

    ``follow`` each link that must be on the master; ``start`` begins
    listening for failovers. ``failovers`` counts the moves followed.
    """

    follows_master = True

    def __init__(self, reactor: Any, address: RedisAddress,
                 trust: TrustRoot | None) -> None:
        assert address.master is not None
        self._reactor = reactor
        self._name = address.master
        self._sentinels = address.servers
        self._tls = address.tls
        self._trust = trust
        # Where links connect now (None: ask the Sentinels), and the last
        # master ever heard of, which a failover replaces.
        self._master: Server | None = None
        self._known: Server | None = None
        self._links: list[RedisLink] = []
        self.failovers = 0
        self.watchers = [
            RedisLink(
                _OneSentinel(self, sentinel), RedisAddress("", 0, tls=address.tls),
                self._watching, lambda _: None, on_message=self._announced, name="sentinel",
                clock=reactor,
            )
            for sentinel in self._sentinels
        ]

    # The Route interface.

    def endpoint(self) -> IStreamClientEndpoint:
        return _MasterEndpoint(self)

    def replica_found(self, where: str) -> None:
        if self._master is not None and _where(self._master) == where:
            self._master = None

    # What the store calls on both routes alike.

    def follow(self, link: RedisLink) -> None:
        self._links.append(link)

    def start(self) -> None:
        for watcher in self.watchers:
            watcher.connect()

    def stop(self) -> Deferred[None]:
        stopped = gatherResults([watcher.disconnect() for watcher in self.watchers])
        return stopped.addCallback(lambda _: None)

    async def master(self) -> Server:
        """The master's address: the last one known, else each Sentinel's answer in turn."""
        if self._master is None:
            self._master = self._learn(await self._ask())
        return self._master

    async def _ask(self) -> Server:
        problems = []
        for sentinel in self._sentinels:
            try:
                reply = await self._ask_one(sentinel)
            except Exception as e:
                problems.append(f"{_where(sentinel)}: {e}")
                continue
            if isinstance(reply, list) and len(reply) == 2:
                return reply[0], int(reply[1])
            problems.append(f"{_where(sentinel)} does not know master {self._name!r}")
        raise MasterNotFound("no Sentinel gave the master: " + "; ".join(problems))

    async def _ask_one(self, sentinel: Server) -> Any:
        endpoint = server_endpoint(self._reactor, sentinel, self._tls, self._trust)
        conn: Any = await endpoint.connect(_OneQuestion())
        try:
            return await conn.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self._name)
        finally:
            conn.transport.abortConnection()

    def _watching(self, conn: RedisProtocol) -> None:
        """Subscribed to failovers; one may have passed while no Sentinel was heard."""
        d = conn.subscribe(SWITCH_MASTER)
        d.addCallback(lambda _: ensureDeferred(self._ask()))
        d.addCallbacks(self._moved, lambda f: log.warn(
            "redis sentinel: checking the master failed: {why}", why=f.getErrorMessage()))

    def _announced(self, channel: str, message: str) -> None:
        if channel != SWITCH_MASTER:
            return
        parts = message.split()
        if len(parts) == 5 and parts[0] == self._name and parts[4].isdigit():
            log.info("redis sentinel: {name} switched to {host}:{port}",
                     name=self._name, host=parts[3], port=parts[4])
            self._moved((parts[3], int(parts[4])), announced=True)

    def _learn(self, master: Server) -> Server:
        """Count a master other than the last one known as a failover followed."""
        old, self._known = self._known, master
        if old is not None and old != master:
            self.failovers += 1
            log.warn("redis master {name} moved from {old} to {new}",
                     name=self._name, old=_where(old), new=_where(master))
        return master

    def _moved(self, master: Server, announced: bool = False) -> None:
        """Send every link to ``master`` now, unless it is there or on its way already.

        An announced switch moves every link not on ``master``, even one that
        is only waiting: it may have met the promoted replica a moment
        before its promotion, been sent back, and be backing off.
        """
        old, self._master = self._master, self._learn(master)
        where = _where(master)
        for link in self._links:
            if link.on(where):
                continue
            if announced or (old is not None and old != master):
                link.reconnect_now()


class _OneQuestion(Factory):
    """The connection of one question to a Sentinel, not worth a log line."""

    noisy = False

    def buildProtocol(self, addr: Any) -> RedisProtocol:
        conn = RedisProtocol(replyTimeout=5.0, convertNumbers=False)
        conn.factory = self
        return conn


@implementer(IStreamClientEndpoint)
class _MasterEndpoint:
    """Connects to wherever the master is at the time of the attempt."""

    def __init__(self, route: SentinelRoute) -> None:
        self._route = route

    def connect(self, factory: Any) -> Deferred[Any]:
        return ensureDeferred(self._connect(factory))

    async def _connect(self, factory: Any) -> Any:
        route = self._route
        master = await route.master()
        endpoint = server_endpoint(route._reactor, master, route._tls, route._trust)
        try:
            return await endpoint.connect(factory)
        except Exception:
            # Dead, perhaps for good: the next attempt asks the Sentinels
            # again, in case their +switch-master did not reach us.
            route.replica_found(_where(master))
            raise


class _OneSentinel:
    """A Sentinel watcher's route: always its Sentinel."""

    follows_master = False

    def __init__(self, route: SentinelRoute, sentinel: Server) -> None:
        self._endpoint = server_endpoint(route._reactor, sentinel, route._tls, route._trust)

    def endpoint(self) -> IStreamClientEndpoint:
        return self._endpoint

    def replica_found(self, where: str) -> None:
        raise AssertionError("Sentinels have no role to check")


def _where(server: Server) -> str:
    return where(*server)

