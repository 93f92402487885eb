"""What the service logs about itself, and in which format.

One line at start-up with the effective settings (secrets masked), so an
operator can tell from the log alone how an instance was configured.
``LOG_FORMAT=json`` swaps twistd's text lines for twisted.logger's JSON
events, one object per line on stdout, for log shippers.
"""

from __future__ import annotations

import sys
from typing import IO

from twisted.logger import ILogObserver, Logger, jsonFileLogObserver

from heartbeat.daemon.config import SETTINGS, Settings
from heartbeat.store.redis.address import RedisAddress

log = Logger()

MASK = "***"
# Settings whose values are credentials: logged as set, never shown.
_SECRETS = ("jwt_secret", "api_key")


def masked(settings: Settings) -> dict[str, str]:
    """Each setting's effective value as text, credentials (the JWT secret, API keys, Redis password) hidden."""
    values: dict[str, str] = {}
    for setting in SETTINGS:
        value = getattr(settings, setting.field)
        if value is None or value == ():
            text = "unset"
        elif setting.field in _SECRETS:
            text = MASK
        elif isinstance(value, RedisAddress):
            text = value.describe(MASK)
        elif isinstance(value, tuple):
            text = ",".join(value)
        else:
            text = str(value)
        values[setting.name] = text
    return values


def log_settings(settings: Settings) -> None:
    shown = masked(settings)
    log.info(
        "heartbeat starting with {settings_text}",
        settings_text=" ".join(f"{name}={text}" for name, text in shown.items()),
        settings=shown,
    )


def log_observer(settings: Settings, out: IO[str] | None = None) -> ILogObserver | None:
    """The observer ``LOG_FORMAT`` asks for; None keeps twistd's own text lines."""
    if settings.log_format != "json":
        return None
    # No record separator: plain JSON Lines, what shippers read.
    return jsonFileLogObserver(out or sys.stdout, recordSeparator="")
