"""Which statuses hide a user: ``HIDDEN_STATUSES`` (SPEC §1).

Beep's status ``3`` means "Invisible", yet broadcast as it is, every
watcher learns from its fresh ``time`` that the user is online right now.
A ping whose status is listed here keeps its device connected, but
watchers see the device, and the user unless another device is visible,
as offline with the last visible ping. This module is only the rule (which
statuses hide); presence applies it when it decides what to store and send.
"""

from __future__ import annotations

from dataclasses import dataclass

from heartbeat.core.errors import BadInput
from heartbeat.core.ping_body import validate_status


def parse_hidden_statuses(text: str) -> tuple[str, ...]:
    """The statuses a comma-separated ``HIDDEN_STATUSES`` lists, each once.

    Each must be a status a ping could send (1–64 characters, no control
    characters), or the setting could never match and hide nothing silently;
    a bad one is a ``ValueError``, which start-up reports naming the setting.
    Blank entries are ignored, as in ``CORS_ORIGINS``; a status cannot
    contain a comma, nor start or end with blanks (plain-text pings are trimmed).
    """
    statuses: dict[str, None] = {}
    for part in text.split(","):
        status = part.strip()
        if not status:
            continue
        try:
            statuses[validate_status(status)] = None
        except BadInput as e:
            raise ValueError(f"{status!r}: {e.message}") from None
    return tuple(statuses)


@dataclass(frozen=True, slots=True)
class Hiding:
    """The statuses that hide; empty (the default) hides nothing, as Beep does today."""

    statuses: frozenset[str] = frozenset()

    @classmethod
    def of(cls, statuses: tuple[str, ...]) -> Hiding:
        return cls(frozenset(statuses))

    def hides(self, status: str) -> bool:
        """Whether a ping with ``status`` hides its device from watchers."""
        return status in self.statuses
