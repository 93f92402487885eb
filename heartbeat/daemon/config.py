"""Settings: each from a twistd option, the environment, ``.env``, or a default.

One table lists every setting; the twistd ``Options`` and the loader are both
built from it, so a setting is declared once. A bad value raises
``UsageError`` naming the setting, which start-up turns into one line.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values
from twisted.python.usage import UsageError

from heartbeat.core.changes import CHANGE_TYPES
from heartbeat.core.hidden_statuses import parse_hidden_statuses
from heartbeat.store.redis.address import HOST_PORT, RedisAddress, parse_redis
from heartbeat.store.redis.tls import load_trust_root
from heartbeat.twisted_internals import endpoint_types


@dataclass(frozen=True)
class Settings:
    """The effective configuration of one heartbeat process."""

    listen: str
    redis: RedisAddress | None
    redis_prefix: str
    redis_ca_file: str | None
    redis_wait_replicas: int
    database: str
    keepalive: float
    presence_timeout: float
    leave_grace: float
    max_devices_per_user: int
    hidden_statuses: tuple[str, ...]
    jwt_secret: str | None
    cors_origins: tuple[str, ...]
    max_users_per_stream: int
    backlog: int
    workers: int
    max_streams: int
    max_header_bytes: int
    max_userid_length: int
    request_timeout: float
    stream_blocked_timeout: float
    log_format: str
    api_key: tuple[str, ...] = ()
    changes_retention: float = 24 * 3600.0
    webhook_url: tuple[str, ...] = ()
    webhook_secret: str | None = None
    webhook_events: tuple[str, ...] = CHANGE_TYPES
    drain_seconds: float = 0.0
    device_retention: float = 30 * 86400.0


# The endpoint types whose listen backlog we set from BACKLOG.
_BACKLOG_TYPES = ("tcp", "tcp6", "ssl", "unix")


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be a whole number of at least 1")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return number


def _header_bytes(value: str) -> int:
    number = int(value)
    # Below this not even a browser's ordinary request fits.
    if number < 1024:
        raise ValueError("must be at least 1024 bytes")
    return number


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be a whole number, 0 or more")
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError("must be a number of seconds, 0 or more")
    return number


def _ca_file(value: str) -> str | None:
    if not value:
        return None
    # Read now, so a missing or unreadable bundle stops start-up, not each connection.
    load_trust_root(value)
    return value


def _optional(value: str) -> str | None:
    return value or None


def _origins(value: str) -> tuple[str, ...]:
    return tuple(origin.strip() for origin in value.split(",") if origin.strip())


def _prefix(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


def _database(value: str) -> str:
    if not value:
        raise ValueError("must be a file name, or :memory:")
    return value


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str) -> float:
    """A duration setting: seconds, or a number with ``s``, ``m``, ``h`` or ``d`` (SPEC §6)."""
    unit = _DURATION_UNITS.get(value[-1:].lower()) if value else None
    number = value[:-1] if unit is not None else value
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise ValueError("must be seconds, or a number with s, m, h or d (90s, 30d)") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError("must be a positive duration (90s, 30d)")
    return seconds


def _keys(value: str) -> tuple[str, ...]:
    return tuple(key.strip() for key in value.split(",") if key.strip())


def _webhook_urls(value: str) -> tuple[str, ...]:
    urls = _keys(value)
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
    return urls


def _webhook_secret(value: str) -> str | None:
    if not value:
        return None
    if not value.startswith("whsec_"):
        raise ValueError("must be a Standard Webhooks secret, whsec_<base64>")
    try:
        key = base64.b64decode(value[len("whsec_"):], validate=True)
    except binascii.Error:
        raise ValueError("must be whsec_ followed by base64") from None
    if len(key) < 24:
        raise ValueError("must hold at least 24 bytes (whsec_ + base64 of them)")
    return value


def _webhook_events(value: str) -> tuple[str, ...]:
    events = _keys(value)
    unknown = [event for event in events if event not in CHANGE_TYPES]
    if unknown or not events:
        raise ValueError(f"must name change types among {', '.join(CHANGE_TYPES)}")
    return events


def _log_format(value: str) -> str:
    if value not in ("text", "json"):
        raise ValueError("must be text or json")
    return value


def listen_endpoint(value: str, backlog: int) -> str:
    """A Twisted endpoint string for ``LISTEN``.

    ``:8080``, ``host:8080`` and ``[::1]:8080`` are the Go service's forms;
    anything else is taken as an endpoint string already.
    """
    match = HOST_PORT.fullmatch(value)
    if match is not None and match["host"] not in endpoint_types():
        port = match["port"]
        if match["v6"] is not None:
            interface = match["v6"].replace(":", r"\:")
            value = f"tcp6:{port}:interface={interface}"
        elif match["host"]:
            value = f"tcp:{port}:interface={match['host']}"
        else:
            value = f"tcp:{port}"
    kind = value.split(":", 1)[0]
    if kind in _BACKLOG_TYPES and "backlog=" not in value:
        value = f"{value}:backlog={backlog}"
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    parse: Callable[[str], Any]
    help: str

    @property
    def option(self) -> str:
        return self.name.lower().replace("_", "-")

    @property
    def field(self) -> str:
        return self.name.lower()


SETTINGS = (
    Setting("LISTEN", ":8080", str, "where to listen: :8080, host:port, [::1]:8080 or a Twisted endpoint string"),
    Setting("REDIS", "", parse_redis, "host:port, :port, redis[s]://[user:password@]host:port/db or redis[s]+sentinel://[user:password@]host:port[,host:port…]/master[/db]; unset: the embedded store (DATABASE)"),
    Setting("REDIS_PREFIX", "heartbeat:", _prefix, "prefix of Redis keys and channels"),
    Setting("REDIS_CA_FILE", "", _ca_file, "PEM bundle of the CAs trusted for rediss:// (default: the system's)"),
    Setting("REDIS_WAIT_REPLICAS", "0", _count, "replicas that must acknowledge a ping (WAIT) before it is answered 200"),
    Setting("DATABASE", "heartbeat.db", _database, "the embedded store's SQLite file (without REDIS); :memory: keeps nothing"),
    Setting("PRESENCE_TIMEOUT", "60", _positive_float, "seconds of silence after which a device is offline"),
    Setting("LEAVE_GRACE", "5", _seconds, "seconds a device stays online after its last presence stream ends"),
    Setting("MAX_DEVICES_PER_USER", "100", _positive_int, "devices kept per user; a new one beyond it forgets the least recently seen"),
    Setting("KEEPALIVE", "25", _positive_float, "seconds between keep-alive comments on streams"),
    Setting("HIDDEN_STATUSES", "", parse_hidden_statuses, "comma-separated statuses that make a user look offline (Beep: 3)"),
    Setting("JWT_SECRET", "", _optional, "HS256 secret; set: built-in JWT auth instead of X-User-Claim"),
    Setting("CORS_ORIGINS", "", _origins, "comma-separated allowed origins, or *"),
    Setting("MAX_USERS_PER_STREAM", "256", _positive_int, "most users one stream or status request may name"),
    Setting("BACKLOG", "4096", _positive_int, "listen backlog"),
    Setting("WORKERS", "1", _positive_int, "processes sharing the listening port (more than 1 needs REDIS)"),
    Setting("MAX_STREAMS", "10000", _positive_int, "most open streams per process; beyond it subscribing answers 503"),
    Setting("MAX_HEADER_BYTES", "16384", _header_bytes, "most bytes of request line and headers; beyond it 431"),
    Setting("MAX_USERID_LENGTH", "256", _positive_int, "most characters in a user id; longer ones answer 400"),
    Setting("REQUEST_TIMEOUT", "10", _positive_float, "seconds a client has to send a whole request (headers and body)"),
    Setting("STREAM_BLOCKED_TIMEOUT", "60", _positive_float, "seconds a stream may stay blocked by a client that does not read"),
    Setting("LOG_FORMAT", "text", _log_format, "log lines as text, or json (one JSON object per line, for log shippers)"),
    Setting("API_KEY", "", _keys, "comma-separated keys of the backend routes (/changes, POST /status, /online, /users/…); unset: they answer 403"),
    Setting("CHANGES_RETENTION", "24h", parse_duration, "how long the change feed keeps a change (seconds, or 90s, 30m, 24h, 7d)"),
    Setting("WEBHOOK_URL", "", _webhook_urls, "comma-separated http(s):// URLs each change of the feed is POSTed to"),
    Setting("WEBHOOK_SECRET", "", _webhook_secret, "the Standard Webhooks signing secret, whsec_<base64 of at least 24 bytes>; needed with WEBHOOK_URL"),
    Setting("WEBHOOK_EVENTS", ",".join(CHANGE_TYPES), _webhook_events, "comma-separated change types the webhooks send"),
    Setting("DRAIN_SECONDS", "0", _seconds, "on stop, seconds to keep serving after /readyz turns 503, ending streams spread over them"),
    Setting("DEVICE_RETENTION", "30d", parse_duration, "how long an offline device is remembered: seconds, or a number with s, m, h or d"),
)


def read_dotenv(directory: Path) -> dict[str, str]:
    """``.env`` in ``directory`` (the Go service's habit), or nothing."""
    path = directory / ".env"
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load_settings(
    options: Mapping[str, str | None],
    environ: Mapping[str, str] | None = None,
    dotenv: Mapping[str, str] | None = None,
) -> Settings:
    """Fill each setting, highest first: option, environment, ``.env``, default."""
    environ = os.environ if environ is None else environ
    dotenv = read_dotenv(Path.cwd()) if dotenv is None else dotenv
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = options.get(setting.option)
        if raw is None:
            raw = environ.get(setting.name)
        if raw is None:
            raw = dotenv.get(setting.name, setting.default)
        try:
            values[setting.field] = setting.parse(raw.strip())
        except ValueError as e:
            raise UsageError(f"bad setting {setting.name}={raw!r}: {e}") from None
    settings = Settings(**values)
    _check_together(settings)
    return settings


def _check_together(settings: Settings) -> None:
    redis = settings.redis
    if settings.redis_ca_file is not None and not (redis is not None and redis.tls):
        raise UsageError("bad setting REDIS_CA_FILE: it is only used with rediss:// in REDIS")
    if settings.redis_wait_replicas and redis is None:
        raise UsageError("bad setting REDIS_WAIT_REPLICAS: replicas need REDIS")
    if settings.webhook_url and settings.webhook_secret is None:
        raise UsageError("bad setting WEBHOOK_SECRET: it is needed with WEBHOOK_URL")
    if settings.workers > 1 and settings.redis is None:
        raise UsageError("bad setting WORKERS: more than 1 worker needs REDIS")
    if settings.workers > 1 and settings.listen.startswith("ssl:"):
        # A worker adopts the bare TCP socket: it would answer TLS clients in plain text.
        raise UsageError("bad setting WORKERS: more than 1 worker cannot serve LISTEN=ssl:; "
                         "use WORKERS=1, or end TLS in a proxy in front")

