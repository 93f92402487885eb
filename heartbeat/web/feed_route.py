"""The app's backend routes (SPEC §1, §8): the ``API_KEY`` check and ``GET /changes``.

``/changes`` reads the store's :class:`~heartbeat.core.changes.ChangeFeed`:
as JSON, one page (waiting up to ``wait`` seconds for the first change), or,
with ``Accept: text/event-stream``, as a stream whose event ids are feed
positions, so ``Last-Event-ID`` resumes it exactly.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime

from heartbeat.core.changes import ChangeFeed, Page, Position, PositionGone
from heartbeat.core.errors import BadCredentials, BadInput, NotAllowed, Unavailable
from heartbeat.core.request_view import RequestView
from heartbeat.core.sse import RETRY

# ``limit``: its default and most; ``wait``: its most, in seconds.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_WAIT = 30.0
# Seconds between keep-alive comments on the feed's stream.
FEED_KEEPALIVE = 25.0


def check_api_key(request: RequestView, keys: tuple[str, ...]) -> None:
    """Let a backend route through only with ``Authorization: Bearer <one of API_KEY>``.

    Each configured key is compared, in constant time, whatever matched
    first, so timing says nothing about which key (or how much of one) was
    right. With no key configured the route is closed (403), not open.
    """
    if not keys:
        raise NotAllowed("backend routes are off: set API_KEY to use them")
    scheme, _, token = (request.getHeader(b"Authorization") or b"").partition(b" ")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token.strip(), key.encode("utf-8"))
    if scheme.lower() != b"bearer" or not matched:
        raise BadCredentials("backend routes need Authorization: Bearer <API_KEY>")


def _one(request: RequestView, name: bytes) -> bytes | None:
    values = request.args.get(name)
    return values[-1] if values else None


def parse_position(text: bytes | None) -> Position | None:
    if text is None or not text.strip():
        return None
    try:
        return Position.parse(text.decode("ascii").strip())
    except (UnicodeDecodeError, PositionGone):
        raise BadInput("after is not a change-feed position (take a change's id or next "
                       "from /changes, or /status's Heartbeat-Cursor)") from None


def parse_limit(text: bytes | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise BadInput(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def parse_wait(text: bytes | None) -> float:
    if text is None:
        return 0.0
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT:
        raise BadInput(f"wait must be a number of seconds from 0 to {MAX_WAIT:g}")
    return seconds


def page_body(page: Page) -> bytes:
    return json.dumps(
        {"changes": [change.as_json() for change in page.changes], "next": str(page.next)},
        separators=(",", ":"),
    ).encode("utf-8")


def wants_stream(request: RequestView) -> bool:
    return b"text/event-stream" in (request.getHeader(b"Accept") or b"")


class ChangesRoute:
    """``GET /changes`` over one feed (None: a store that keeps none, a stand-in's)."""

    def __init__(self, feed: ChangeFeed | None, keys: tuple[str, ...], clock: IReactorTime,
                 streams: set[Callable[[], None]]) -> None:
        self.feed = feed
        self.keys = keys
        self.clock = clock
        # The open feed streams' ways to end them (the service's stop).
        self.streams = streams

    def _feed(self, request: RequestView) -> ChangeFeed:
        check_api_key(request, self.keys)
        if self.feed is None:
            raise Unavailable("this store keeps no change feed", 60)
        return self.feed

    def page(self, request: RequestView) -> Deferred[bytes]:
        """One page, JSON; waits up to ``wait`` s for a first change."""
        feed = self._feed(request)
        after = parse_position(_one(request, b"after"))
        limit = parse_limit(_one(request, b"limit"))
        wait = parse_wait(_one(request, b"wait"))
        return ensureDeferred(self._page(feed, after, limit, wait)).addCallback(page_body)

    async def _page(self, feed: ChangeFeed, after: Position | None, limit: int,
                    wait: float) -> Page:
        page = await feed.changes(after, limit)
        if page.changes or not wait:
            return page
        if await self._waited(feed, page.next, wait):
            return await feed.changes(page.next, limit)
        return page

    async def _waited(self, feed: ChangeFeed, after: Position, seconds: float,
                      holder: list[Deferred[None]] | None = None) -> bool:
        """Whether a change came after ``after`` within ``seconds`` (``holder``
        gets the wait, for whoever must cancel it sooner)."""
        waiting = feed.wait(after)
        timer = self.clock.callLater(seconds, waiting.cancel)
        if holder is not None:
            holder[:] = [waiting]
        try:
            await waiting
        except CancelledError:
            return False
        finally:
            if timer.active():
                timer.cancel()
        return True

    def start_stream(self, request: RequestView) -> tuple[ChangeFeed, Position | None]:
        """Check a stream request: the feed, and where it resumes (``Last-Event-ID`` first)."""
        feed = self._feed(request)
        resume = request.getHeader(b"Last-Event-ID")
        return feed, parse_position(resume if resume is not None else _one(request, b"after"))

    async def stream(self, feed: ChangeFeed, page: Page, write: Any,
                     finished: Deferred[object]) -> None:
        """Write ``page`` and every change after it as events until ``finished`` fires."""
        write(RETRY)
        gone: list[object] = []
        holder: list[Deferred[None]] = []

        def hung_up(result: object) -> None:
            gone.append(result)
            for waiting in holder:
                waiting.cancel()

        finished.addBoth(hung_up)
        while True:
            for change, position in zip(page.changes, page.positions):
                write(b"id: %s\ndata: %s\n\n" % (
                    str(position).encode("ascii"),
                    json.dumps(change.as_json(), separators=(",", ":")).encode("utf-8")))
            if not page.changes and not await self._waited(
                    feed, page.next, FEED_KEEPALIVE, holder) and not gone:
                write(b":\n\n")
            if gone:
                return
            page = await feed.changes(page.next, DEFAULT_LIMIT)
