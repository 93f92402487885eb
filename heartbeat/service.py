"""The running service: listening, keep-alives, and an orderly stop."""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.web.server import Site

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
        site: Site,
        hub: Hub,
        store: Store,
        keepalive: float,
        clock: IReactorTime,
    ) -> None:
        super().__init__()
        self.hub = hub
        self.store = store
        self.listener = StreamServerEndpointService(endpoint, site)
        self.listener.setServiceParent(self)
        self.keepalive = TimerService(keepalive, hub.keepalive)
        self.keepalive.clock = clock
        self.keepalive.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.running = False
        await self.listener.stopService()
        await self.keepalive.stopService()
        self.hub.close_all()
        await self.store.close()
        log.info("heartbeat stopped")
