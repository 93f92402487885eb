"""The Redis store's timeouts and batch sizes, the same for every topology."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

# Seconds a command may wait for its reply before the connection is dropped
# (and remade): a Redis that hangs must turn into 503s, not hung requests.
REPLY_TIMEOUT = 5.0
# Seconds between sweeps of the due deadlines, and the most entries one sweep
# takes from a partition (a full one is swept again at once).
SWEEP_INTERVAL = 1.0
SWEEP_BATCH = 128
# Milliseconds a batch's WAIT gives the replicas (REDIS_WAIT_REPLICAS) to
# acknowledge it: well inside REPLY_TIMEOUT, which would drop the connection.
WAIT_TIMEOUT_MS = 1000
# The most users one read_many.lua call reads: a resync of every watched user
# must not hold Redis, which runs one script at a time, for more than a few ms.
READ_CHUNK = 200
# The most devices one rearm.lua call moves (presence streams' renewals).
REARM_CHUNK = 1000
# Devices whose deadline keys are remembered between renewals (topologies' caches):
# more than one process holds presence streams of.
REARM_CACHE = 1 << 16


def chunks(items: Sequence[T], size: int = REARM_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
