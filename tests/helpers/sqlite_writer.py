"""The embedded store's writer, run at once for tests on a fake clock."""

from __future__ import annotations

import sqlite3

from twisted.internet.defer import Deferred, maybeDeferred

# Where the tests' fake clocks start: any time, as long as it is one.
START = 1_800_000_000.0


class Writer:
    """Runs each write at once; counts them, and fails them while ``failing``."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False

    def __call__(self, f, *args) -> Deferred:
        self.calls += 1
        if self.failing:
            return maybeDeferred(_raise_full)
        return maybeDeferred(f, *args)


def _raise_full() -> None:
    raise sqlite3.OperationalError("database or disk is full")
