"""Open files: as many as the system allows, and no more streams than fit in them (SPEC §5).

A stream holds a descriptor for as long as it is open, and so does every
other connection while it is served. With the distributions' usual soft limit
(1,024) the default ``MAX_STREAMS`` (10,000) cannot be reached: ``accept``
would fail first, and Twisted's answer to that is to close nothing and say
nothing to the client. So the soft limit is raised to the hard one, and a
``MAX_STREAMS`` that still cannot fit is lowered, once, with a warning.
"""

from __future__ import annotations

import dataclasses
import resource

from twisted.logger import Logger

from heartbeat.daemon.config import Settings

log = Logger()

# Descriptors kept for what is not a stream: the listening socket, the
# reactor's own (epoll, waker), Redis connections or the SQLite file with its
# WAL, shared memory and lock, the log, the reserve the port accepts on when
# everything else is taken, and requests (pings, /status) served meanwhile.
RESERVED = 64
# The most a soft limit is raised to when the hard one is unlimited.
CEILING = 1 << 20


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as e:
            log.warn("could not raise the open files limit from {soft} to {hard}: {error}",
                     soft=soft, hard=wanted, error=e)
    return CEILING if soft == resource.RLIM_INFINITY else soft


def fit_streams(settings: Settings, open_files: int) -> Settings:
    """``settings`` with a ``MAX_STREAMS`` that ``open_files`` descriptors can hold."""
    room = max(1, open_files - RESERVED - open_files // 10)
    if settings.max_streams <= room:
        return settings
    log.warn("MAX_STREAMS={asked} does not fit in {open_files} open files (RLIMIT_NOFILE): "
             "lowered to {room}; raise the limit (LimitNOFILE=, ulimit -n) for more",
             asked=settings.max_streams, open_files=open_files, room=room)
    return dataclasses.replace(settings, max_streams=room)
