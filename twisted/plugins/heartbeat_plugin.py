"""twistd plugin: ``twistd -n heartbeat``. Lazy, so ``twistd --help`` stays light."""

from twisted.application.service import ServiceMaker
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

heartbeat = ServiceMaker(
    "heartbeat",
    "heartbeat.daemon.tap",
    "Last-seen presence over Server-Sent Events",
    "heartbeat",
)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _InheritedSocket:
    """``heartbeat-fd:3:domain=INET``: the listening socket a worker inherits."""

    prefix = "heartbeat-fd"

    def parseStreamServer(self, reactor, fd, domain="INET"):  # type: ignore[no-untyped-def]
        from heartbeat.daemon.workers import inherited_endpoint

        return inherited_endpoint(reactor, fd, domain)


inherited_socket = _InheritedSocket()
