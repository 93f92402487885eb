"""The running service: listening, keep-alives, readiness and an orderly stop."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import IServiceCollection, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, gatherResults, succeed
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from zope.interface import implementer

from heartbeat.core.hub import Hub
from heartbeat.core.stream import Stream
from heartbeat.daemon import systemd
from heartbeat.store.interface import Store
from heartbeat.twisted_internals import take_bursts
from heartbeat.web.http import HeartbeatSite

log = Logger()

# Seconds the stop waits for pings in flight and for the last bytes of every
# connection to leave, before aborting what is left: with the store's close
# after it, well inside the 5 s a supervisor allows.
DRAIN_TIMEOUT = 3.0


@implementer(IStreamServerEndpoint)
class _ObservedEndpoint:
    """An endpoint that also tells the service when it is listening."""

    def __init__(self, endpoint: IStreamServerEndpoint) -> None:
        self._endpoint = endpoint
        self._port: IListeningPort | None = None
        self._waiting: list[Deferred[IListeningPort]] = []

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        d = self._endpoint.listen(factory)
        d.addCallback(self._listening)
        return d

    def when_listening(self) -> Deferred[IListeningPort]:
        if self._port is not None:
            return succeed(self._port)
        d: Deferred[IListeningPort] = Deferred()
        self._waiting.append(d)
        return d

    def _listening(self, port: IListeningPort) -> IListeningPort:
        take_bursts(port)
        self._port = port
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(port)
        return port


class HeartbeatService(MultiService):
    """Owns the listening port, the hub's keep-alive timer and the store.

    ``MultiService`` stops children concurrently; here order matters (stop
    accepting, end the open streams, let pings in flight finish and every
    connection flush, then close the store), so ``stopService`` does it
    step by step. Under systemd it also reports readiness and stopping.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        site: HeartbeatSite,
        hub: Hub,
        store: Store,
        keepalive: float,
        clock: IReactorTime,
        log_observer: ILogObserver | None = None,
    ) -> None:
        super().__init__()
        self.site = site
        self.hub = hub
        self.store = store
        self.log_observer = log_observer
        self.clock = clock
        self._endpoint = _ObservedEndpoint(endpoint)
        self._ready: Deferred[object] | None = None
        self.workers: Service | None = None
        self.listener = StreamServerEndpointService(self._endpoint, site)
        self.listener.setServiceParent(self)
        self.keepalive = TimerService(keepalive, hub.keepalive)
        self.keepalive.clock = clock
        self.keepalive.setServiceParent(self)

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
        self._ready = gatherResults(
            [self._endpoint.when_listening(), systemd.store_ready(self.store, self.clock)],
            consumeErrors=True,
        )
        self._ready.addCallback(self._serving)
        self._ready.addErrback(lambda _: None)

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port once there is one."""
        return self._endpoint.when_listening()

    def add_workers(self, pool: Service) -> None:
        """Run ``pool`` (the ``WORKERS`` processes) with this service.

        It is stopped alongside the primary's own stop, not after it: every
        process drains its own streams at once.
        """
        self.workers = pool
        pool.setServiceParent(self)

    def _serving(self, _: object) -> None:
        log.info("heartbeat serving")
        systemd.notify("READY=1\nSTATUS=serving")

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.running = False
        systemd.notify("STOPPING=1")
        workers_stopped = self.workers.stopService() if self.workers else None
        if self._ready is not None:
            self._ready.cancel()
        await self.listener.stopService()
        await self.keepalive.stopService()
        # Streams own their connections; every other connection is the site's.
        streams = tuple(self.hub.streams)
        late = self.clock.callLater(DRAIN_TIMEOUT, _abort, streams)
        await DeferredList([self.hub.close_all(), self.site.drain(DRAIN_TIMEOUT)])
        if late.active():
            late.cancel()
        await self.store.close()
        if workers_stopped is not None:
            await workers_stopped
        log.info("heartbeat stopped")


def _abort(streams: tuple[Stream, ...]) -> None:
    """Drop the streams still open at the drain's end: their clients stopped reading."""
    for stream in streams:
        stream.abort()
