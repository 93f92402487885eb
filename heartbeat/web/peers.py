"""Finding a stream's client that vanished without closing (SPEC §3, presence streams).

A phone in a tunnel or a killed VM sends no FIN: its stream would look open
until a write failed, many minutes of retransmissions later, and a presence
stream would hold its device online all that time. The kernel finds it
sooner when asked: TCP keepalive probes an idle connection, and
``TCP_USER_TIMEOUT`` drops one whose sent data (a keep-alive comment, an
event, a probe) stays unacknowledged, or stuck behind a zero window, that
long. Both are set so a vanished client is noticed within ``within``
seconds; the connection is then lost as any other, and its stream ends.
They hold for every connection (a ping's too: an idle keep-alive connection
costs a probe now and then, and one whose client is gone is closed sooner).

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


def find_dead_peers(listening: socket.socket, within: float) -> None:
    """Ask the kernel to drop a connection accepted on ``listening`` if its peer is gone for
    ``within`` s.

    Set on the listening socket, once: every connection accepted on it inherits
    the options (Linux copies all four), so a stream costs no system call for
    them. Only where the platform has the options; a unix socket is left alone.
    """
    if listening.family not in (socket.AF_INET, socket.AF_INET6):
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
                listening.setsockopt(level, option, value)
    except OSError as e:
        log.warn("cannot set keepalive on the listening socket: {error}", error=e)
