"""The running service: listening, keep-alives, and an orderly stop."""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from heartbeat.http import HeartbeatSite
from heartbeat.hub import Hub
from heartbeat.store import Store

log = Logger()


class HeartbeatService(MultiService):
    """Owns the listening port, the hub's keep-alive timer and the store.

    ``MultiService`` stops children concurrently; here order matters (stop
    accepting, end the open streams, then close the store), so ``stopService``
    does it step by step.
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
        self.listener = StreamServerEndpointService(endpoint, site)
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

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.running = False
        await self.listener.stopService()
        await self.keepalive.stopService()
        self.hub.close_all()
        await self.store.close()
        log.info("heartbeat stopped")
