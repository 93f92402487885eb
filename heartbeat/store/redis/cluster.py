"""Redis Cluster routing over txredisapi: each command to its slot's master, sharded pub/sub.

txredisapi has no Cluster support, so this module is ours:

- :class:`Cluster` reads the slot map (``CLUSTER SLOTS``) from any node it
  reaches (the ``REDIS`` servers are only seeds), keeps one command link per
  master, and sends each command to the master of the slot it names.
  ``MOVED`` (a slot that moved for good) updates the map and retries there;
  ``ASK`` (a slot being migrated) retries once on the target after
  ``ASKING``; ``TRYAGAIN`` (a multi-key call caught half-migrated) retries
  shortly. The map is read again every second and whenever a link is lost, so
  a replica promoted after its master died is followed within a second of
  the cluster saying so. A slot whose master is unreachable fails at once
  (:class:`StoreUnavailable`, a 503), never queued.
- :class:`ShardedSubscriber` holds one ``SSUBSCRIBE`` connection per node
  that owns a watched channel's slot. A ``sunsubscribe`` the server pushes
  (the slot moved away) or a lost node puts the channel back where the slot
  lives now; the owner is told (``on_lost``, ``on_back``) so that it resyncs
  what may have been missed meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import ConnectionError as RedisConnectionError
from txredisapi import RedisProtocol, ResponseError

from heartbeat.core.store_contract import StoreUnavailable
from heartbeat.store.redis.address import RedisAddress, Server
from heartbeat.store.redis.keys import CLUSTER_SLOTS, slot
from heartbeat.store.redis.link import DirectRoute, RedisLink, _Subscriber
from heartbeat.store.redis.lua import Script
from heartbeat.store.redis.tls import TrustRoot
from heartbeat.store.redis.txredis import encode_command, queue_reply, send

log = Logger()

# Seconds between reads of the slot map: how soon a promoted replica is found.
REFRESH_INTERVAL = 1.0
# Redirects (MOVED, ASK, TRYAGAIN) one command may follow before it fails: with
# TRYAGAIN_DELAY, a script whose keys a migration has split waits up to a second.
REDIRECTS = 20
# Error replies to a script call that did not run it: followed alone.
_NOT_RUN = ("MOVED ", "ASK ", "TRYAGAIN", "NOSCRIPT")
# Seconds before a TRYAGAIN is tried again, and that a redirect waits for a
# link to a node it has not reached before.
TRYAGAIN_DELAY = 0.05
CONNECT_WAIT = 2.0


def parse_slots(reply: list, asked: Server) -> list[Server | None]:
    """``CLUSTER SLOTS``'s reply as each slot's master (None: no master serves it).

    An empty host means the node that was asked (Redis's "unknown endpoint").
    """
    owners: list[Server | None] = [None] * CLUSTER_SLOTS
    for entry in reply:
        start, end, master = int(entry[0]), int(entry[1]), entry[2]
        server = (str(master[0]) or asked[0], int(master[1]))
        owners[start:end + 1] = [server] * (end - start + 1)
    return owners


def redirect(error: str) -> tuple[str, int, Server] | None:
    """``MOVED``/``ASK`` errors as (kind, slot, server)."""
    kind, _, rest = error.partition(" ")
    if kind not in ("MOVED", "ASK"):
        return None
    slot_text, _, where = rest.partition(" ")
    host, _, port = where.rpartition(":")
    return kind, int(slot_text), (host, int(port))


class _Node:
    """A master's link and, while it is up, its connection."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.conn: RedisProtocol | None = None
        self._waiting: list[Deferred[RedisProtocol]] = []

    def ready(self, conn: RedisProtocol) -> None:
        self.conn = conn
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(conn)

    def when_ready(self, reactor: Any, timeout: float) -> Deferred[RedisProtocol]:
        if self.conn is not None:
            return succeed(self.conn)
        d: Deferred[RedisProtocol] = Deferred()
        self._waiting.append(d)
        late = reactor.callLater(timeout, self._give_up, d)
        return d.addBoth(_cancelling(late))

    def _give_up(self, d: Deferred[RedisProtocol]) -> None:
        if d in self._waiting:
            self._waiting.remove(d)
            d.errback(StoreUnavailable())


def _cancelling(call: Any) -> Callable[[Any], Any]:
    def cancel(result: Any) -> Any:
        if call.active():
            call.cancel()
        return result
    return cancel


def _put(result: Any, results: list[Any], n: int) -> None:
    results[n] = result


def node_address(address: RedisAddress, server: Server) -> RedisAddress:
    """``address``'s credentials and TLS, for one node."""
    return replace(address, host=server[0], port=server[1], kind="direct", servers=())


class Cluster:
    """The slot map, a command link per master, and commands routed by slot.

    ``on_map`` is called after every change of the map (so subscriptions
    can follow their slots).
    """

    def __init__(self, reactor: Any, address: RedisAddress, trust: TrustRoot | None,
                 reply_timeout: float, on_map: Callable[[], None],
                 on_ready: Callable[[], None], on_lost: Callable[[], None]) -> None:
        self._reactor = reactor
        self._address = address
        self._trust = trust
        self.reply_timeout = reply_timeout
        self._on_map = on_map
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._seeds = address.servers
        self._owners: list[Server | None] = [None] * CLUSTER_SLOTS
        # Each master's slots, made from ``_owners`` when first asked for after a change.
        self._masters: list[tuple[Server, list[int]]] | None = None
        self._nodes: dict[Server, _Node] = {}
        self._refreshing = False
        self._refresher = LoopingCall(self.refresh)
        self._refresher.clock = reactor
        self._stopped = False
        # Times the map changed and the links followed (failovers, reshards).
        self.failovers = 0

    def start(self) -> None:
        for server in self._seeds:
            self._node(server)
        self._refresher.start(REFRESH_INTERVAL, now=False)

    def stop(self) -> Deferred[None]:
        self._stopped = True
        if self._refresher.running:
            self._refresher.stop()
        nodes, self._nodes = list(self._nodes.values()), {}
        return gatherResults([node.link.disconnect() for node in nodes]).addCallback(lambda _: None)

    @property
    def links(self) -> list[RedisLink]:
        return [node.link for node in self._nodes.values()]

    @property
    def complete(self) -> bool:
        """Every slot has a master, and its link is up."""
        masters = set(self._owners)
        return None not in masters and all(
            server in self._nodes and self._nodes[server].conn is not None for server in masters
        )

    def owner(self, slot: int) -> Server | None:
        return self._owners[slot]

    def masters(self) -> list[tuple[Server, list[int]]]:
        """Each master and the slots it holds (ascending), as the map says."""
        if self._masters is None:
            held: dict[Server, list[int]] = {}
            for n, server in enumerate(self._owners):
                if server is not None:
                    held.setdefault(server, []).append(n)
            self._masters = list(held.items())
        return self._masters

    def run_at(self, server: Server, script: Script, keys: list[str],
               args: list[object]) -> Deferred[Any]:
        """``script`` on ``server`` itself, whatever its keys' slots (no redirect followed)."""
        node = self._nodes.get(server)
        if node is None or node.conn is None:
            return fail(StoreUnavailable())
        return script.run(node.conn, keys, args)

    def commands(self, slot: int) -> SlotCommands:
        """What :class:`~heartbeat.store.redis.lua.Script` runs on, for ``slot``."""
        return SlotCommands(self, slot)

    def execute(self, slot: int, *args: object) -> Deferred[Any]:
        """``args`` on ``slot``'s master, following redirects."""
        return self._send(slot, args, self._owners[slot], False, 0)

    def run_all(self, script: Script, calls: list[tuple[int, list[str], list[object]]]
                ) -> Deferred[list[Any]]:
        """Each call of ``script`` (slot, keys, args) on its slot's master; each result,
        in order, a reply or a Failure.

        The calls to one master are encoded and written together and their
        replies collected as one (:func:`~.txredis.send`): a batch touches
        many slots, and each call made on its own cost more than the script.
        A call answered ``MOVED``, ``ASK``, ``TRYAGAIN`` or ``NOSCRIPT`` (the
        script did not run) is followed alone, as :meth:`execute` and
        ``Script.run`` would.
        """
        results: list[Any] = [None] * len(calls)
        by_node: dict[Server | None, list[int]] = {}
        for n, call in enumerate(calls):
            by_node.setdefault(self._owners[call[0]], []).append(n)
        steps = []
        for server, numbers in by_node.items():
            node = self._nodes.get(server) if server is not None else None
            conn = None if node is None else node.conn
            if conn is None:
                for n in numbers:
                    results[n] = Failure(StoreUnavailable())
                continue
            payload = b"".join([script.command(calls[n][1], calls[n][2]) for n in numbers])
            d = maybeDeferred(send, conn, payload, len(numbers))
            d.addCallbacks(self._replied, self._all_failed,
                           callbackArgs=(script, calls, numbers, results),
                           errbackArgs=(numbers, results))
            steps.append(d)
        return gatherResults(steps).addCallback(lambda _: results)

    def _replied(self, replies: list[Any], script: Script, calls: list, numbers: list[int],
                 results: list[Any]) -> Deferred[Any] | None:
        again = []
        for n, reply in zip(numbers, replies):
            if not isinstance(reply, Exception):
                results[n] = reply
            elif isinstance(reply, ResponseError) and str(reply).startswith(_NOT_RUN):
                d = self._again(Failure(reply), script, *calls[n])
                again.append(d.addBoth(_put, results, n))
            else:
                results[n] = Failure(reply)
        return gatherResults(again) if again else None

    def _again(self, failure: Failure, script: Script, slot: int, keys: list[str],
               args: list[object]) -> Deferred[Any]:
        """A call answered ``failure``, followed as :meth:`execute` and ``Script.run`` would."""
        operands = ("EVALSHA", script.sha, len(keys), *keys, *args)
        d = succeed(None).addCallback(lambda _: self._redirected(failure, slot, operands, 0))
        return script.or_eval(d, self.commands(slot), keys, args)

    @staticmethod
    def _all_failed(failure: Failure, numbers: list[int], results: list[Any]) -> None:
        for n in numbers:
            results[n] = failure

    def _send(self, slot: int, args: tuple[object, ...], server: Server | None,
              asking: bool, redirects: int) -> Deferred[Any]:
        node = self._nodes.get(server) if server is not None else None
        if node is None or node.conn is None:
            return fail(StoreUnavailable())
        conn = node.conn
        if asking:
            # Sent just before on the same connection: it covers that command only.
            conn.execute_command("ASKING").addErrback(lambda _: None)
        d = maybeDeferred(conn.execute_command, *args)
        return d.addErrback(self._redirected, slot, args, redirects)

    def _redirected(self, failure: Failure, slot: int, args: tuple[object, ...],
                    redirects: int) -> Deferred[Any] | Failure:
        if not failure.check(ResponseError) or redirects >= REDIRECTS:
            return failure
        error = str(failure.value)
        if error.startswith("TRYAGAIN"):
            return deferLater(self._reactor, TRYAGAIN_DELAY, self._send, slot, args,
                              self._owners[slot], False, redirects + 1)
        moved = redirect(error)
        if moved is None:
            return failure
        kind, _, server = moved
        if kind == "MOVED":
            self.moved(slot, server)
        node = self._node(server)
        d = node.when_ready(self._reactor, CONNECT_WAIT)
        return d.addCallback(
            lambda _: self._send(slot, args, server, kind == "ASK", redirects + 1)
        )

    def moved(self, slot: int, server: Server) -> None:
        """``slot`` lives on ``server`` now (a ``MOVED``): use it, and re-read the map."""
        if self._owners[slot] != server:
            self._owners[slot] = server
            self._masters = None
            self._node(server)
            self._on_map()
        self.refresh_soon()

    def refresh_soon(self) -> None:
        if not self._stopped:
            self._reactor.callLater(0, self.refresh)

    def refresh(self) -> None:
        """Read the slot map from a reachable node (the masters' first)."""
        if self._refreshing or self._stopped:
            return
        masters = set(self._owners)
        up = sorted(
            (server for server, node in self._nodes.items() if node.conn is not None),
            key=lambda server: server not in masters,
        )
        if not up:
            return
        self._refreshing = True
        d = self._ask(up)
        d.addCallbacks(self._mapped, lambda f: log.warn("redis cluster: cannot read the slot map: "
                                                        "{why}", why=f.getErrorMessage()))
        d.addBoth(self._refreshed)

    def _ask(self, servers: list[Server]) -> Deferred[list[Server | None]]:
        server = servers[0]
        conn = self._nodes[server].conn
        d = fail(StoreUnavailable()) if conn is None else maybeDeferred(
            conn.execute_command, "CLUSTER", "SLOTS")
        d.addCallback(parse_slots, server)
        if len(servers) > 1:
            d.addErrback(lambda _: self._ask(servers[1:]))
        return d

    def _refreshed(self, _: object) -> None:
        self._refreshing = False

    def _mapped(self, owners: list[Server | None]) -> None:
        if None in owners and None not in self._owners:
            # A node that lost its cluster (CLUSTERDOWN, a minority side):
            # the map it gives is not better than the one held.
            return
        if owners == self._owners:
            return
        before = set(self._owners)
        self._owners = owners
        self._masters = None
        masters = {server for server in owners if server is not None}
        for server in masters:
            self._node(server)
        for server in list(self._nodes):
            if server not in masters and server not in self._seeds:
                self._nodes.pop(server).link.disconnect()
        if before - {None}:
            self.failovers += 1
            log.info("redis cluster: the slot map changed, now {count} masters: {masters}",
                     count=len(masters), masters=", ".join(sorted(f"{h}:{p}" for h, p in masters)))
        self._on_map()
        if self.complete:
            self._on_ready()

    def _node(self, server: Server) -> _Node:
        node = self._nodes.get(server)
        if node is None:
            host, port = server
            link = RedisLink(
                DirectRoute(self._reactor, node_address(self._address, server), self._trust),
                node_address(self._address, server),
                lambda conn: self._ready(server, conn), lambda conn: self._lost(server, conn),
                reply_timeout=self.reply_timeout, name=f"commands {host}:{port}",
                clock=self._reactor,
            )
            node = self._nodes[server] = _Node(link)
            link.connect()
        return node

    def _ready(self, server: Server, conn: RedisProtocol) -> None:
        node = self._nodes.get(server)
        if node is None:
            return
        node.ready(conn)
        log.info("redis cluster: connected to {host}:{port}", host=server[0], port=server[1])
        self.refresh_soon()
        if self.complete:
            self._on_ready()

    def _lost(self, server: Server, conn: RedisProtocol) -> None:
        node = self._nodes.get(server)
        if node is not None and node.conn is conn:
            node.conn = None
        if self._stopped:
            return
        if server in self._owners:
            log.warn("redis cluster: lost master {host}:{port}: its slots get 503 until it is back "
                     "or a replica takes over", host=server[0], port=server[1])
            self._on_lost()
        self.refresh_soon()


class SlotCommands:
    """A stand-in for a connection that sends every command to one slot's master."""

    def __init__(self, cluster: Cluster, slot: int) -> None:
        self._cluster = cluster
        self._slot = slot

    def execute_command(self, *args: object) -> Deferred[Any]:
        return self._cluster.execute(self._slot, *args)


class _Sharded(_Subscriber):
    """A sharded-subscriber connection: ``smessage`` delivered, pushed ``sunsubscribe`` reported."""

    factory: _ShardLink

    def connectionMade(self) -> Any:
        # SUNSUBSCRIBEs of ours whose confirmations are still to come, per channel.
        self.leaving: dict[str, int] = {}
        return super().connectionMade()

    def replyReceived(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3:
            kind, channel = reply[0], reply[1]
            if kind == "smessage":
                self.factory.on_message(channel, reply[2])  # type: ignore[misc]
                return
            if kind == "sunsubscribe":
                if self.leaving.get(channel, 0) > 0:
                    self.leaving[channel] -= 1
                else:  # pushed: the slot is no longer served here
                    self.factory.on_sunsubscribe(channel)
                return
            if kind == "ssubscribe":
                queue_reply(self, reply)
                return
        super().replyReceived(reply)

    def ssubscribe(self, channel: str) -> Deferred[Any]:
        return self.execute_command("SSUBSCRIBE", channel, apply_timeout=False)

    def sunsubscribe(self, channel: str) -> None:
        """Not waited for: its confirmation is told apart from a push by ``leaving``.

        Written without ``execute_command``, which would wait for a reply in
        the queue that pushes must never enter.
        """
        self.leaving[channel] = self.leaving.get(channel, 0) + 1
        self.transport.write(encode_command(self, "SUNSUBSCRIBE", channel))


class _ShardLink(RedisLink):
    def __init__(self, *args: Any, on_sunsubscribe: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.protocol = _Sharded
        self.on_sunsubscribe = on_sunsubscribe


class ShardedSubscriber:
    """``SSUBSCRIBE`` on each watched channel's node, following its slot wherever it goes.

    ``on_lost`` is called when channels may have missed messages (a node
    lost, a slot moved away), ``on_back`` once every wanted channel is
    subscribed again: the owner resyncs then.
    """

    def __init__(self, reactor: Any, cluster: Cluster, address: RedisAddress,
                 trust: TrustRoot | None, on_message: Callable[[str, str], None],
                 on_lost: Callable[[], None], on_back: Callable[[], None]) -> None:
        self._reactor = reactor
        self._cluster = cluster
        self._address = address
        self._trust = trust
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_back = on_back
        self._links: dict[Server, _ShardLink] = {}
        self._conns: dict[Server, _Sharded] = {}
        # Each wanted channel's node, and whether it is subscribed there yet.
        self._at: dict[str, Server | None] = {}
        self._subscribed: set[str] = set()
        self._waiting: dict[str, list[Deferred[None]]] = {}
        # Something was missed since the last resync.
        self._missed = False
        self._stopped = False

    @property
    def complete(self) -> bool:
        return len(self._subscribed) == len(self._at)

    @property
    def caught_up(self) -> bool:
        """Nothing lost since the last ``on_back`` (a new channel still subscribing is not a loss)."""
        return not self._missed

    @property
    def links(self) -> list[RedisLink]:
        return list(self._links.values())

    def subscribe(self, channel: str) -> Deferred[None]:
        if channel in self._at and channel in self._subscribed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.setdefault(channel, []).append(d)
        if channel not in self._at:
            self._at[channel] = None
            self._place(channel)
        return d

    def unsubscribe(self, channel: str) -> None:
        server = self._at.pop(channel, None)
        self._subscribed.discard(channel)
        for d in self._waiting.pop(channel, []):
            d.callback(None)
        conn = self._conns.get(server) if server is not None else None
        if conn is not None and conn.connected:
            conn.sunsubscribe(channel)

    def stop(self) -> Deferred[None]:
        self._stopped = True
        for waiting in self._waiting.values():
            for d in waiting:
                d.errback(StoreUnavailable())
        self._waiting.clear()
        links, self._links = list(self._links.values()), {}
        return gatherResults([link.disconnect() for link in links]).addCallback(lambda _: None)

    def map_changed(self) -> None:
        """Move each channel whose slot now lives elsewhere; drop links no channel needs."""
        for channel, server in list(self._at.items()):
            if self._cluster.owner(slot(channel)) != server:
                self._place(channel)
        used = set(self._at.values())
        for server in list(self._links):
            if server not in used:
                self._conns.pop(server, None)
                self._links.pop(server).disconnect()

    def _place(self, channel: str) -> None:
        """Subscribe ``channel`` on its slot's master, leaving the node it was on."""
        if self._stopped or channel not in self._at:
            return
        old = self._at[channel]
        server = self._cluster.owner(slot(channel))
        if old is not None and old != server:
            self._lose(channel)
            conn = self._conns.get(old)
            if conn is not None and conn.connected:
                conn.sunsubscribe(channel)
        self._at[channel] = server
        if server is None:
            return  # the next map places it
        self._link(server)
        conn = self._conns.get(server)
        if conn is not None:
            self._ssubscribe(conn, server, channel)
        # else: subscribed with the others when the link is ready

    def _lose(self, channel: str) -> None:
        if channel in self._subscribed:
            self._subscribed.discard(channel)
            if not self._missed:
                self._missed = True
                self._on_lost()

    def _ssubscribe(self, conn: _Sharded, server: Server, channel: str) -> Deferred[None]:
        d = maybeDeferred(conn.ssubscribe, channel)
        d.addCallbacks(self._confirmed, self._refused, callbackArgs=(conn, server, channel),
                       errbackArgs=(server, channel))
        return d

    def _confirmed(self, _: object, conn: _Sharded, server: Server, channel: str) -> None:
        if self._at.get(channel) != server or self._conns.get(server) is not conn:
            return  # moved or lost meanwhile: placed again from there
        self._subscribed.add(channel)
        for d in self._waiting.pop(channel, []):
            d.callback(None)
        if self._missed and self.complete:
            self._missed = False
            self._on_back()

    def _refused(self, failure: Failure, server: Server, channel: str) -> None:
        if failure.check(RedisConnectionError):
            return  # subscribed again when the link is back
        moved = redirect(str(failure.value)) if failure.check(ResponseError) else None
        if moved is not None:
            self._cluster.moved(moved[1], moved[2])
            return  # the map change places it again
        log.warn("redis cluster: SSUBSCRIBE {channel} failed: {why}",
                 channel=channel, why=failure.getErrorMessage())
        self._reactor.callLater(REFRESH_INTERVAL, self._place, channel)

    def _link(self, server: Server) -> _ShardLink:
        link = self._links.get(server)
        if link is None:
            host, port = server
            address = node_address(self._address, server)
            link = self._links[server] = _ShardLink(
                DirectRoute(self._reactor, address, self._trust), address,
                lambda conn: self._ready(server, conn), lambda conn: self._lost(server, conn),
                on_message=self._on_message, on_sunsubscribe=lambda c: self._pushed(server, c),
                reply_timeout=self._cluster.reply_timeout, name=f"subscriber {host}:{port}",
                clock=self._reactor,
            )
            link.connect()
        return link

    def _ready(self, server: Server, conn: _Sharded) -> None:
        if self._links.get(server) is None:
            return
        self._conns[server] = conn
        for channel, at in list(self._at.items()):
            if at == server:
                self._ssubscribe(conn, server, channel)

    def _lost(self, server: Server, conn: _Sharded) -> None:
        if self._conns.get(server) is conn:
            del self._conns[server]
        for channel, at in self._at.items():
            if at == server:
                self._lose(channel)
        if not self._stopped:
            self._cluster.refresh_soon()

    def _pushed(self, server: Server, channel: str) -> None:
        """The server unsubscribed ``channel`` (its slot moved): find where it went."""
        if self._at.get(channel) != server:
            return
        self._lose(channel)
        self._at[channel] = None
        self._cluster.refresh_soon()
        # Until the map says where, the old owner answers SSUBSCRIBE with MOVED.
        self._reactor.callLater(REFRESH_INTERVAL / 4, self._place, channel)
