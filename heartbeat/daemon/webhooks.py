"""Webhooks (SPEC §8): the change feed POSTed to each ``WEBHOOK_URL``, signed, at least once.

One :class:`WebhookSender` per URL reads the store's feed from where that
URL's deliveries durably got to (the store keeps it: a SQLite meta row), in
batches of at most 100, and moves on only once a batch is answered ``2xx``.
With many instances on one store, the one holding the URL's claim (a lease
it renews; a killed instance's lapses) delivers, and records its progress
only while it still holds it, so a change goes out through one instance and
again only after a failure.
So a user's change never overtakes their earlier one, a restart or a kill
resends at most the batch under way (with the same ``webhook-id``), and a
slow or dead receiver holds back nothing but its own deliveries: pings and
streams never wait for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from functools import partial
from io import BytesIO
from typing import Any

from standardwebhooks import Webhook
from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from heartbeat.core.changes import Change, ChangeFeed, Position, PositionGone

log = Logger()

BATCH = 100
# A delivery is a 2xx within this many seconds.
TIMEOUT = 10.0
# Full-jitter exponential backoff between attempts at one batch: a random
# wait up to FIRST·2ⁿ, capped at CAP.
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 300.0
# Seconds an idle sender waits on the feed before it looks again anyway.
IDLE_WAIT = 30.0
# Seconds a claim on a URL's deliveries lasts unless renewed (every third of it).
LEASE = 10.0

# POST url, headers, body → the answer's status code.
Post = Callable[[str, dict[str, str], bytes], Deferred[int]]


def agent_post(reactor: Any) -> Post:
    """POST with twisted.web's Agent, persistent connections, ``TIMEOUT`` s for the whole answer."""
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=True))

    def post(url: str, headers: dict[str, str], body: bytes) -> Deferred[int]:
        head = Headers({name: [value] for name, value in headers.items()})
        asked = agent.request(b"POST", url.encode("utf-8"), head, FileBodyProducer(BytesIO(body)))

        def answered(response: Any) -> Deferred[int]:
            return readBody(response).addCallback(lambda _: int(response.code))

        d: Deferred[int] = asked.addCallback(answered)
        d.addTimeout(TIMEOUT, reactor)
        return d

    return post


class _ClaimLost(Exception):
    """Another instance holds the URL's claim now: this one stops delivering."""


def message_id(batch: Sequence[Change]) -> str:
    """The batch's ``webhook-id``: the same for every retry of the same changes."""
    digest = hashlib.sha256("\n".join(change.id for change in batch).encode("utf-8"))
    return "msg_" + digest.hexdigest()[:32]


class WebhookSender(Service):
    """Delivers one URL's share of the feed, in order, until stopped."""

    def __init__(self, feed: ChangeFeed, url: str, secret: str, events: Sequence[str],
                 clock: IReactorTime, post: Post, retention: float,
                 wall: Callable[[], float] = time.time,
                 jitter: Callable[[], float] = random.random) -> None:
        self.url = url
        self._feed = feed
        self._url = url
        self._signer = Webhook(secret)
        self._events = frozenset(events)
        self._clock = clock
        self._post = post
        self._retention_ms = int(retention * 1000)
        self._wall = wall
        self._jitter = jitter
        self._loop: Deferred[None] | None = None
        self._holding: Deferred[None] | None = None
        self._store_failing = False
        # Who this sender is to the other instances' senders of the same URL.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.delivered = 0
        self.failed = 0
        # When the oldest change not yet delivered happened (epoch ms), None when caught up.
        self.oldest_pending: int | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = ensureDeferred(self._run())
        self._loop.addErrback(self._ended)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None:
            self._loop.cancel()
            self._loop = None

    def _ended(self, failure: Any) -> None:
        if not failure.check(CancelledError):
            log.failure("webhook sender for {url} stopped", failure, url=self._url)

    async def _run(self) -> None:
        """Deliver while this instance holds the URL's claim; wait for it otherwise."""
        while self.running:
            if not await self._claim():
                await deferLater(self._clock, LEASE / 3)
                continue
            keeper = LoopingCall(self._keep)
            keeper.clock = self._clock
            keeper.start(LEASE / 3, now=False)
            self._holding = ensureDeferred(self._deliver_all())
            try:
                await self._holding
            except (CancelledError, _ClaimLost):
                if not self.running:
                    raise CancelledError() from None
                log.info("webhooks to {url}: another instance delivers them now", url=self._url)
            finally:
                self._holding = None
                if keeper.running:
                    keeper.stop()

    async def _claim(self) -> bool:
        try:
            return bool(await self._feed.claim(self.url, self.owner, LEASE))
        except CancelledError:
            raise
        except Exception:
            return False

    def _keep(self) -> Deferred[None]:
        """Renew the claim; lost (or not known to be held), stop delivering at once."""
        def kept(held: bool) -> None:
            if not held and self._holding is not None:
                self._holding.cancel()

        return ensureDeferred(self._claim()).addCallback(kept)

    async def _deliver_all(self) -> None:
        position = await self._retrying(lambda: self._feed.delivered(self.url))
        while self.running:
            try:
                page = await self._retrying(partial(self._feed.changes, position, BATCH))
            except PositionGone:
                log.error("webhooks to {url}: changes older than CHANGES_RETENTION were "
                          "dropped undelivered; going on from the oldest kept", url=self._url)
                position = None
                continue
            if not page.changes:
                self.oldest_pending = None
                if page.next != position:
                    await self._remember(page.next)
                position = page.next
                await self._idle(position)
                continue
            self.oldest_pending = page.changes[0].at
            batch = [change for change in page.changes if change.type in self._events]
            if batch:
                await self._deliver(batch)
            position = page.next
            await self._remember(position)

    async def _idle(self, position: Position) -> None:
        waiting = self._feed.wait(position)
        timer = self._clock.callLater(IDLE_WAIT, waiting.cancel)
        try:
            await waiting
        except CancelledError:
            if not timer.active():  # the idle wait is up: look again
                return
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def _remember(self, position: Position) -> None:
        held = await self._retrying(
            lambda: self._feed.set_delivered(self.url, position, self.owner))
        if not held:
            raise _ClaimLost()

    async def _retrying(self, step: Callable[[], Deferred[Any]]) -> Any:
        """``step``'s result, tried again each second while the store fails it
        (logged once an outage, not once a second)."""
        while True:
            try:
                result = await step()
            except (CancelledError, PositionGone):
                raise
            except Exception as e:
                if not self._store_failing:
                    self._store_failing = True
                    log.warn("webhooks to {url}: the store failed ({error}); retrying each "
                             "second", url=self._url, error=e)
                await deferLater(self._clock, FIRST_BACKOFF)
                continue
            if self._store_failing:
                self._store_failing = False
                log.info("webhooks to {url}: the store answers again", url=self._url)
            return result

    async def _deliver(self, batch: list[Change]) -> None:
        """POST ``batch`` until a 2xx, or until all of it is past retention."""
        body = json.dumps({"changes": [change.as_json() for change in batch]},
                          separators=(",", ":")).encode("utf-8")
        msg_id = message_id(batch)
        attempt = 0
        while True:
            sent = self._wall()
            headers = {
                "Content-Type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(sent)),
                "webhook-signature": self._signer.sign(
                    msg_id, datetime.fromtimestamp(int(sent), tz=timezone.utc), body),
            }
            try:
                code = await self._post(self._url, headers, body)
                why = f"answered {code}"
            except CancelledError:
                raise
            except Exception as e:
                code, why = 0, str(e) or type(e).__name__
            if 200 <= code < 300:
                self.delivered += 1
                if attempt:
                    log.info("webhooks to {url}: delivered again", url=self._url)
                return
            self.failed += 1
            if batch[-1].at < self._clock.seconds() * 1000 - self._retention_ms:
                log.error("webhooks to {url}: dropped {count} changes past CHANGES_RETENTION "
                          "undelivered ({why})", url=self._url, count=len(batch), why=why)
                return
            if attempt == 0:
                log.warn("webhooks to {url}: {why}; retrying with backoff", url=self._url, why=why)
            delay = self._jitter() * min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(attempt, 20))
            attempt += 1
            await deferLater(self._clock, delay)


class Webhooks(MultiService):
    """Every URL's sender; stopped before the store closes."""

    def __init__(self, senders: Sequence[WebhookSender]) -> None:
        super().__init__()
        self.senders = tuple(senders)
        for sender in senders:
            sender.setServiceParent(self)

    def oldest_pending(self) -> int | None:
        pending = [s.oldest_pending for s in self.senders if s.oldest_pending is not None]
        return min(pending) if pending else None
