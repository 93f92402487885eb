"""A stream's query options (SPEC §2 "Stream options"), parsed and checked in one place.

Every subscribe route (and ``POST /subscribe``) reads its options here, so a
value the contract does not name is the same ``400`` wherever it is sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from heartbeat.core.errors import BadInput
from heartbeat.core.request_view import RequestView

# batch=N bounds, in seconds.
MIN_BATCH = 1
MAX_BATCH = 60


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """What a stream asked to be spared: every ping (``changes_only``), one event
    per user at the start (``snapshot``), or an event per change (``batch`` seconds)."""

    changes_only: bool = False
    snapshot: bool = False
    batch: int = 0

    @property
    def plain(self) -> bool:
        """No option: the stream is exactly what it is without them (compat)."""
        return not (self.changes_only or self.snapshot or self.batch)


PLAIN = StreamOptions()


def _only(request: RequestView, name: bytes, allowed: tuple[bytes, ...], what: str) -> bytes | None:
    """The value of ``name`` (the last, all checked), or None when absent."""
    values = request.args.get(name)
    if not values:
        return None
    for value in values:
        if value not in allowed:
            raise BadInput(f"{name.decode()} must be {what}")
    return values[-1]


_BATCHES = tuple(b"%d" % n for n in range(MIN_BATCH, MAX_BATCH + 1))


def stream_options(request: RequestView) -> StreamOptions:
    """The options of ``request``'s query; any value but the contract's is a 400."""
    args = request.args
    if b"changes" not in args and b"snapshot" not in args and b"batch" not in args:
        return PLAIN
    changes = _only(request, b"changes", (b"only",), "only")
    snapshot = _only(request, b"snapshot", (b"1",), "1")
    batch = _only(request, b"batch", _BATCHES,
                  f"a whole number of seconds from {MIN_BATCH} to {MAX_BATCH}")
    return StreamOptions(
        changes_only=changes is not None, snapshot=snapshot is not None,
        batch=0 if batch is None else int(batch),
    )
