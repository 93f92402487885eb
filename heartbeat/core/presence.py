"""The one value the whole service moves around: a user's last ping."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Ping:
    """What is stored per user and sent to every watcher of that user.

    Frozen so the same object can be shared by the store, the hub and every
    stream that saw it; slots because many streams keep one per watched user.
    """

    userid: str
    time: int
    status: str

    def as_status(self) -> dict[str, object]:
        """The stored-ping shape of the public API (no ``userid``)."""
        return {"time": self.time, "status": self.status}
