"""systemd's notify protocol, so a ``Type=notify`` unit knows when we serve.

The protocol is one datagram of ``KEY=value`` lines to the unix socket named
in ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). Outside
systemd the variable is unset and nothing is sent. It is small enough to
implement here rather than depend on libsystemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from heartbeat.core.store_contract import Store

log = Logger()

# How often to look whether the store came up, while start-up waits for it.
_STORE_POLL = 0.2


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` to systemd; False when not run by systemd or it failed."""
    environ = os.environ if environ is None else environ
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as e:
        log.warn("could not notify systemd at {address}: {error}", address=address, error=e)
        return False
    return True


def store_ready(store: Store, clock: IReactorTime) -> Deferred[None]:
    """Fires once ``store`` can take pings: at once for the in-process store.

    A Redis store may still be connecting (or Redis may be down at start-up,
    which is not an error); polling ``available`` needs nothing more from the
    store than the protocol already gives.
    """
    ready: Deferred[None] = Deferred(lambda _: poll.stop())

    def check() -> None:
        if store.available:
            poll.stop()
            ready.callback(None)

    poll = LoopingCall(check)
    poll.clock = clock
    poll.start(_STORE_POLL, now=True)
    return ready
