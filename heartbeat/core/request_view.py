"""What core rules read of a request: its headers and query arguments, nothing of HTTP's machinery.

Both the edge's own parsed requests and twisted.web's ``Request`` have this
shape, so identity and user-list rules run unchanged on either.
"""

from __future__ import annotations

from typing import Protocol


class RequestView(Protocol):
    """A request as core sees it."""

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        """The query's arguments, each name's values in order."""

    def getHeader(self, name: bytes) -> bytes | None:
        """The last value of header ``name`` (any case), or None."""
