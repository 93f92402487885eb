"""The embedded store's writer, run at once for tests on a fake clock."""

from __future__ import annotations

import sqlite3

from twisted.internet.defer import Deferred, maybeDeferred

# Where the tests' fake clocks start: any time, as long as it is one.
START = 1_800_000_000.0


# The store's reads of users (not in memory, or online at start-up): not counted as writes.
_USER_READS = frozenset(("read_users", "read_online"))


class Writer:
    """Runs each write at once; counts them, and fails them while ``failing``."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False

    def __call__(self, f, *args) -> Deferred:
        if f.__name__ in _USER_READS:
            return maybeDeferred(f, *args)
        self.calls += 1
        if self.failing:
            return maybeDeferred(_raise_full)
        return maybeDeferred(f, *args)


def _raise_full() -> None:
    raise sqlite3.OperationalError("database or disk is full")


class Later:
    """Holds each call until the test runs it: ``run()`` the oldest, ``run(i)`` the i-th."""

    def __init__(self) -> None:
        self.pending: list[tuple[Deferred, object, tuple]] = []

    def __call__(self, f, *args) -> Deferred:
        d: Deferred = Deferred()
        self.pending.append((d, f, args))
        return d

    def run(self, index: int = 0) -> None:
        d, f, args = self.pending.pop(index)
        d.callback(f(*args))
