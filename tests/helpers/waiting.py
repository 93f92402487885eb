"""The one way tests poll for something that happens in another process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 15, step: float = 0.05) -> T:
    """``predicate()``'s first true result, polled every ``step`` s; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"still not true after {timeout}s"
        time.sleep(step)
    return result
