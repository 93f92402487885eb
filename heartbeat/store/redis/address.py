"""Where the Redis store connects: the ``REDIS`` setting's forms, parsed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

# ``host:port``, ``:port`` or ``[v6]:port``: the Go service's address forms (LISTEN uses them too).
HOST_PORT = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d+)")


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    password: str | None = None
    db: int = 0


def parse_redis(value: str) -> RedisAddress | None:
    """``host:port``, ``:port`` (the Go service's form) or a ``redis://`` URL."""
    if not value:
        return None
    if value.startswith(("redis://", "unix://", "rediss://")):
        url = urlsplit(value)
        if url.scheme != "redis":
            raise ValueError(f"unsupported scheme {url.scheme!r}, use redis://")
        db = url.path.strip("/") or "0"
        if not db.isdigit():
            raise ValueError(f"database {db!r} is not a number")
        password = unquote(url.password) if url.password is not None else None
        return RedisAddress(url.hostname or "localhost", url.port or 6379, password, int(db))
    match = HOST_PORT.fullmatch(value)
    if match is None:
        raise ValueError("expected host:port, :port or redis://[:password@]host:port/db")
    port = int(match["port"])
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return RedisAddress(match["v6"] or match["host"] or "localhost", port)
