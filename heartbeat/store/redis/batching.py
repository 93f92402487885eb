"""Batching per reactor turn: what one turn brings goes out as one command."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

# A batch's items, each with the Deferred its caller waits on.
Waiting = list[tuple[Any, Deferred[Any]]]


def queue_for_turn(reactor: Any, queue: Waiting, item: Any,
                   send: Callable[[], None]) -> Deferred[Any]:
    """``item``'s answer, once ``send`` has sent it with the rest of this turn's ``queue``.

    The first item of a turn schedules ``send`` for the end of the turn, so
    one command carries every ping (or read) the turn brought.
    """
    d: Deferred[Any] = Deferred()
    if not queue:
        reactor.callLater(0, send)
    queue.append((item, d))
    return d
