"""Where the Redis store connects: the ``REDIS`` setting's forms, parsed.

``host:port`` and ``:port`` are the Go service's forms; the URLs add a
database, an ACL user and password, TLS (``rediss``), and the servers a
deployment's master is found through (Sentinel) or spread over (Cluster).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

# ``host:port``, ``:port`` or ``[v6]:port``: the Go service's address forms (LISTEN uses them too).
HOST_PORT = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d+)")
# One server of a URL: ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``.
_SERVER = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]/@,]+))(?::(?P<port>\d*))?")

# Each URL scheme: (kind, TLS, default port).
_SCHEMES = {
    "redis": ("direct", False, 6379),
    "rediss": ("direct", True, 6379),
    "redis+sentinel": ("sentinel", False, 26379),
    "rediss+sentinel": ("sentinel", True, 26379),
    "redis+cluster": ("cluster", False, 6379),
    "rediss+cluster": ("cluster", True, 6379),
}

Server = tuple[str, int]


@dataclass(frozen=True)
class RedisAddress:
    """A parsed ``REDIS``.

    ``kind`` is ``direct`` (one server, ``host``:``port``), ``sentinel``
    (``servers`` are Sentinels, asked for the master named ``master``) or
    ``cluster`` (``servers`` are seed nodes). The user and password are
    those of the data servers; ``tls`` covers every connection.
    """

    host: str
    port: int
    password: str | None = None
    db: int = 0
    username: str | None = None
    tls: bool = False
    kind: str = "direct"
    servers: tuple[Server, ...] = ()
    master: str | None = None

    def describe(self, secret: str = "***") -> str:
        """The address as a URL, with ``secret`` in place of the password."""
        scheme = ("rediss" if self.tls else "redis") + ("" if self.kind == "direct" else f"+{self.kind}")
        auth = ""
        if self.password is not None:
            auth = f"{self.username or ''}:{secret}@"
        servers = self.servers or ((self.host, self.port),)
        hosts = ",".join(f"{_bracket(host)}:{port}" for host, port in servers)
        path = {"direct": f"/{self.db}", "sentinel": f"/{self.master}/{self.db}", "cluster": ""}
        return f"{scheme}://{auth}{hosts}{path[self.kind]}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def where(host: str, port: int) -> str:
    """A server as logs and comparisons name it: ``host:port``, ``[v6]:port``."""
    return f"{_bracket(host)}:{port}"


def parse_redis(value: str) -> RedisAddress | None:
    """Any form of SPEC §4; None when unset. Raises ValueError saying what is wrong."""
    if not value:
        return None
    if "://" in value:
        return _parse_url(value)
    match = HOST_PORT.fullmatch(value)
    if match is None:
        raise ValueError(
            "expected host:port, :port, redis://[user:password@]host:port/db, rediss://… "
            "or redis+sentinel://[user:password@]host:port[,host:port…]/master[/db]"
        )
    return RedisAddress(match["v6"] or match["host"] or "localhost", _port(match["port"]))


def _parse_url(value: str) -> RedisAddress:
    scheme, rest = value.split("://", 1)
    if scheme.lower() not in _SCHEMES:
        raise ValueError(f"unsupported scheme {scheme!r}, use " + ", ".join(f"{s}://" for s in _SCHEMES))
    kind, tls, default_port = _SCHEMES[scheme.lower()]
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username, password = _credentials(userinfo)
    servers = tuple(_server(text, default_port) for text in hosts.split(","))
    if kind == "direct" and len(servers) > 1:
        raise ValueError(f"{scheme}:// names one server; use redis+sentinel:// for several")
    parts = [unquote(part) for part in path.split("/") if part]
    master = None
    if kind == "sentinel":
        if not parts:
            raise ValueError("name the master after the Sentinels: redis+sentinel://host:port/mymaster")
        master, parts = parts[0], parts[1:]
    if kind == "cluster" and parts:
        raise ValueError("Redis Cluster has no databases: nothing may follow the servers")
    if len(parts) > 1:
        raise ValueError(f"unexpected path {path!r}")
    db = parts[0] if parts else "0"
    if not (db.isascii() and db.isdigit()):
        raise ValueError(f"database {db!r} is not a number")
    host, port = servers[0]
    return RedisAddress(
        host, port, password, int(db), username, tls, kind,
        servers if kind != "direct" else (), master,
    )


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    username, colon, password = userinfo.partition(":")
    if not colon:
        raise ValueError("a user name needs a password: user:password@")
    return unquote(username) or None, unquote(password)


def _server(text: str, default_port: int) -> Server:
    if not text:
        return "localhost", default_port
    match = _SERVER.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not host, host:port or [v6]:port")
    port = _port(match["port"]) if match["port"] else default_port
    return match["v6"] or match["host"], port


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return port
