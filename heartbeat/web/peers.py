"""Finding a stream's client that vanished without closing (SPEC §3, presence streams).

A phone in a tunnel or a killed VM sends no FIN: its stream would look open
until a write failed, many minutes of retransmissions later, and a presence
stream would hold its device online all that time. The kernel finds it
sooner when asked: TCP keepalive probes an idle connection, and
``TCP_USER_TIMEOUT`` drops one whose sent data (a keep-alive comment, an
event, a probe) stays unacknowledged, or stuck behind a zero window, that
long. Both are set so a vanished client is noticed within ``within``
seconds; the connection is then lost as any other, and its stream ends.

A client that is alive but not reading (a frozen background tab) still
acknowledges what it receives, so it is not cut off by this.
"""

from __future__ import annotations

import math
import socket

from twisted.logger import Logger

log = Logger()

# Keepalive probes sent before the kernel gives up on an idle connection.
PROBES = 3


def _socket_of(transport: object) -> socket.socket | None:
    """The TCP socket under ``transport`` (TCP, TLS over TCP, a twisted.web request)."""
    for _ in range(4):
        get_handle = getattr(transport, "getHandle", None)
        handle = get_handle() if get_handle is not None else None
        if isinstance(handle, socket.socket):
            return handle if handle.type == socket.SOCK_STREAM else None
        transport = getattr(transport, "transport", None) or getattr(transport, "_request", None)
        if transport is None:
            return None
    return None


def find_dead_peer(transport: object, within: float) -> None:
    """Ask the kernel to drop ``transport``'s connection if its peer is gone for ``within`` s.

    Only where the platform has the options (Linux has all four; others get
    what they have); unix sockets and anything else are left alone.
    """
    sock = _socket_of(transport)
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    # Idle, then PROBES probes: the last unanswered one falls at about ``within``.
    interval = max(1, math.floor(within / (PROBES + 1)))
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), interval),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), interval),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), PROBES),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), max(1, int(within * 1000))),
    ]
    try:
        for level, option, value in options:
            if option is not None:
                sock.setsockopt(level, option, value)
    except OSError as e:
        # The connection may already be gone; its loss is reported as usual.
        log.debug("cannot set keepalive on a stream socket: {error}", error=e)
