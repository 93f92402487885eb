"""The running service: listening, keep-alives, readiness and an orderly stop."""

from __future__ import annotations

import gc
import math
import random
from typing import Any

from twisted.application.service import IServiceCollection, MultiService, Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    ensureDeferred,
    gatherResults,
    succeed,
)
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from heartbeat.core.hub import Hub
from heartbeat.core.store_contract import Store
from heartbeat.core.stream import Stream
from heartbeat.daemon import systemd
from heartbeat.twisted_internals import listening_socket, take_bursts
from heartbeat.web.edge import Edge
from heartbeat.web.peers import find_dead_peers
from heartbeat.web.responses import out_of_descriptors

log = Logger()

# Seconds the stop waits for pings in flight and for the last bytes of every
# connection to leave, before aborting what is left: with the store's close
# after it, well inside the 5 s a supervisor allows.
DRAIN_TIMEOUT = 3.0
# While draining (DRAIN_SECONDS), how often a share of the open streams is ended.
DRAIN_TICK = 0.1
# The reconnect delay told to each stream a draining instance ends, drawn
# from this range (ms) so its clients do not all come back at one moment.
DRAIN_RETRY_MS = (1000, 5000)


class SettleGarbageCollector(Service):
    """Start-up's last step: keep the cyclic garbage collector off what start-up built.

    What start-up built (every module, class and function the daemon
    imported) lives as long as the process: frozen, no full collection walks
    it again. The thresholds stay Python's: larger young generations make
    each middle collection walk more survivors at once, a pause every
    stream's next event waits behind. Process-wide, so only the daemon's own
    tree has this step (``makeService``); tests that start one get it undone
    (``tests/conftest.py``).
    """

    def startService(self) -> None:
        super().startService()
        gc.collect()
        gc.freeze()


class ListeningService(Service):
    """Listens on ``LISTEN`` as the service starts; a port it cannot have ends start-up.

    twisted's ``StreamServerEndpointService`` logs a failure to listen as an
    unhandled error and lets the process run on, listening nowhere (under
    systemd: "active", serving nothing). Here the failure, which every
    endpoint heartbeat accepts reports at once, exits with one line.
    """

    def __init__(
        self, endpoint: IStreamServerEndpoint, factory: Factory, setting: str, reactor: Any,
        dead_peer_within: float | None = None,
    ) -> None:
        self._endpoint = endpoint
        # Connections whose client vanished are dropped within this (peers.py).
        self._dead_peer_within = dead_peer_within
        self._reactor = reactor
        self.factory = factory
        self._setting = setting
        self._port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None
        self._waiting: list[Deferred[IListeningPort]] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._listening is not None:
            return
        failed: list[Failure] = []
        self._listening = self._endpoint.listen(self.factory)
        self._listening.addCallbacks(self._listened, failed.append)
        if failed:
            raise SystemExit(
                f"heartbeat: cannot listen on LISTEN={self._setting!r}: "
                f"{failed[0].getErrorMessage()}"
            )
        self._listening.addErrback(self._failed_later)

    def _listened(self, port: IListeningPort) -> IListeningPort:
        take_bursts(port, lambda: out_of_descriptors(int(self._reactor.seconds())))
        sock = listening_socket(port)
        if sock is not None and self._dead_peer_within is not None:
            find_dead_peers(sock, self._dead_peer_within)
        self._port = port
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(port)
        return port

    def _failed_later(self, failure: Failure) -> None:
        log.critical("heartbeat: cannot listen on LISTEN={setting!r}: {why}",
                     setting=self._setting, why=failure.getErrorMessage())
        self._reactor.stop()

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port once there is one."""
        if self._port is not None:
            return succeed(self._port)
        d: Deferred[IListeningPort] = Deferred()
        self._waiting.append(d)
        return d

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._port is None:
            return succeed(None)
        stopped = self._port.stopListening()
        return stopped if isinstance(stopped, Deferred) else succeed(None)


class HeartbeatService(MultiService):
    """Owns the listening port and the store.

    ``MultiService`` stops children concurrently; here order matters (stop
    accepting, end the open streams, let pings in flight finish and every
    connection flush, then close the store), so ``stopService`` does it
    step by step. Under systemd it also reports readiness and stopping.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        edge: Edge,
        hub: Hub,
        store: Store,
        clock: IReactorTime,
        log_observer: ILogObserver | None = None,
        listen_setting: str = "",
        drain_seconds: float = 0.0,
    ) -> None:
        super().__init__()
        self.drain_seconds = drain_seconds
        self.edge = edge
        self.hub = hub
        self.store = store
        self.log_observer = log_observer
        self.clock = clock
        self._ready: Deferred[object] | None = None
        self.workers: Service | None = None
        self.webhooks: Service | None = None
        self.listening = ListeningService(endpoint, edge, listen_setting, clock,
                                          edge.api.settings.presence_timeout)
        self.listening.setServiceParent(self)

    def setServiceParent(self, parent: IServiceCollection) -> None:
        """Also give twistd's application the log observer ``LOG_FORMAT`` chose.

        twistd starts logging after the plugin has built the service, with
        the application's ``ILogObserver`` if it has one; that is the only
        way a plugin can choose the format of twistd's own log lines.
        """
        super().setServiceParent(parent)
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)

    def startService(self) -> None:
        super().startService()
        waits: list[Deferred[Any]] = [
            self.listening.when_listening(), systemd.store_ready(self.store, self.clock),
        ]
        ready: Deferred[Any] = gatherResults(waits, consumeErrors=True)
        ready.addCallback(self._serving)
        ready.addErrback(lambda _: None)
        self._ready = ready

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port once there is one."""
        return self.listening.when_listening()

    def add_workers(self, pool: Service) -> None:
        """Run ``pool`` (the ``WORKERS`` processes) with this service.

        It is stopped alongside the primary's own stop, not after it: every
        process drains its own streams at once.
        """
        self.workers = pool
        pool.setServiceParent(self)

    def add_webhooks(self, webhooks: Service) -> None:
        """Run ``webhooks`` (the feed's senders) with this service, stopped before the store."""
        self.webhooks = webhooks
        webhooks.setServiceParent(self)

    def _serving(self, _: object) -> None:
        log.info("heartbeat serving")
        systemd.notify("READY=1\nSTATUS=serving")

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.running = False
        # /readyz says 503 from now on: a load balancer stops sending clients.
        self.edge.api.stopping = True
        systemd.notify("STOPPING=1")
        workers_stopped = self.workers.stopService() if self.workers else None
        if self._ready is not None:
            self._ready.cancel()
        if self.drain_seconds > 0:
            log.info("draining for {seconds:g}s before stopping", seconds=self.drain_seconds)
            await self._spread_stream_ends(self.drain_seconds)
        await self.listening.stopService()
        # Streams own their connections; every other connection is the edge's.
        streams = tuple(self.hub.streams)
        late = self.clock.callLater(DRAIN_TIMEOUT, _abort, streams)
        for end in tuple(self.edge.api.feed_streams):  # the open /changes streams
            end()
        await DeferredList([self.hub.close_all(), self.edge.drain(DRAIN_TIMEOUT)])
        if late.active():
            late.cancel()
        if self.hub.holder is not None:
            # The streams just ended: their devices' grace, before the store closes.
            await self.hub.holder.close()
        if self.webhooks is not None:
            await self.webhooks.stopService()
        await self.store.close()
        if workers_stopped is not None:
            await workers_stopped
        log.info("heartbeat stopped")


    async def _spread_stream_ends(self, window: float) -> None:
        """Keep serving for ``window`` seconds, ending the open streams evenly over it.

        Each tick ends the share of the streams open then that the time left
        calls for, so streams opened meanwhile (clients the load balancer
        still sends) end too, and a late tick catches up rather than
        bunching the rest at the end.
        """
        clock = self.clock
        end = clock.seconds() + window
        # The fraction of a stream a tick's share left over, carried to the
        # next, so rounding never bunches ends together.
        owed = 0.0
        while True:
            left = end - clock.seconds()
            last = left <= DRAIN_TICK  # (a late tick may find the window gone)
            streams = tuple(self.hub.streams)
            owed += len(streams) * (1.0 if last else DRAIN_TICK / left)
            share = min(len(streams), math.floor(owed))
            owed -= share
            for stream in random.sample(streams, share):
                stream.close(retry_ms=random.randint(*DRAIN_RETRY_MS))
            if last:
                break
            await deferLater(clock, DRAIN_TICK)
        if left > 0:
            await deferLater(clock, left)


def _abort(streams: tuple[Stream, ...]) -> None:
    """Drop the streams still open at the drain's end: their clients stopped reading."""
    for stream in streams:
        stream.abort()
