"""Prometheus metrics for one service, rendered at ``GET /metrics``.

Each service has its own registry, so tests can build several. The hot paths
stay cheap: the hub keeps plain integer counts (one addition per ping
fanned out, not per write) and the state gauges read the hub and store only
when scraped; a ping costs one counter increment and one histogram sample.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.web.iweb import IRequest

from heartbeat.core.hub import Hub
from heartbeat.core.store_contract import Store
from heartbeat.daemon.webhooks import Webhooks

# Fine buckets for pings answered without leaving the process, wider ones for
# a store round trip or two; the top buckets catch a struggling store.
_PING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _LiveState:
    """Reads the hub's and store's state at scrape time."""

    def __init__(self, hub: Hub, store: Store) -> None:
        self._hub = hub
        self._store = store
        self.webhooks: Webhooks | None = None

    def collect(self) -> Iterator[Metric]:
        hub = self._hub
        yield GaugeMetricFamily(
            "heartbeat_open_streams", "Open event streams on this instance",
            value=len(hub.streams),
        )
        yield GaugeMetricFamily(
            "heartbeat_subscribed_users",
            "Users with at least one open stream on this instance",
            value=hub.users,
        )
        yield CounterMetricFamily(
            "heartbeat_events_delivered", "Presence events written to streams",
            value=hub.delivered,
        )
        yield CounterMetricFamily(
            "heartbeat_keepalives_sent", "Keep-alive comments written to streams",
            value=hub.keepalives_sent,
        )
        if hub.holder is not None:
            yield GaugeMetricFamily(
                "heartbeat_presence_streams",
                "Open presence streams (presence=<status>) on this instance",
                value=hub.holder.streams,
            )
        yield GaugeMetricFamily(
            "heartbeat_store_available",
            "1 while the store can take pings, 0 while it is unreachable",
            value=1 if self._store.available else 0,
        )
        online = self._store.online_users()
        if online is not None:
            yield GaugeMetricFamily(
                "heartbeat_online_users",
                "Users online now (any device pinged within PRESENCE_TIMEOUT), across instances",
                value=online,
            )
        yield CounterMetricFamily(
            "heartbeat_offline_transitions",
            "Users this instance took offline (timeout or leave); sum over instances",
            value=self._store.offline_transitions,
        )
        reconnects = CounterMetricFamily(
            "heartbeat_store_reconnects",
            "Times a store connection (commands or subscriber) came back after it was lost",
            labels=["link"],
        )
        for link, count in self._store.reconnects.items():
            reconnects.add_metric([link], count)
        yield reconnects
        yield from _redis_health(self._store)
        yield from self._feed()

    def _feed(self) -> Iterator[Metric]:
        """The change feed's and webhooks' figures (SPEC §8), where there is a feed."""
        recorded = getattr(self._store, "changes_recorded", None)
        if recorded is not None:
            yield CounterMetricFamily(
                "heartbeat_changes_recorded",
                "Changes this instance recorded in the change feed", value=recorded,
            )
        webhooks = self.webhooks
        if webhooks is None:
            return
        yield CounterMetricFamily(
            "heartbeat_webhook_requests_delivered", "Webhook requests answered 2xx in time",
            value=sum(sender.delivered for sender in webhooks.senders),
        )
        yield CounterMetricFamily(
            "heartbeat_webhook_requests_failed",
            "Webhook requests not answered 2xx in time (each retried)",
            value=sum(sender.failed for sender in webhooks.senders),
        )
        oldest = webhooks.oldest_pending()
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000)
        yield GaugeMetricFamily(
            "heartbeat_webhook_oldest_undelivered_seconds",
            "Age of the oldest change not yet delivered to every webhook (0: none)", value=age,
        )


def _redis_health(store: Store) -> Iterator[Metric]:
    """What only the Redis store counts: failovers followed, connections found dead."""
    failovers = getattr(store, "failovers", None)
    if failovers is None:
        return
    yield CounterMetricFamily(
        "heartbeat_store_failovers",
        "Times the Redis master moved (Sentinel) and this instance followed it",
        value=failovers,
    )
    liveness = CounterMetricFamily(
        "heartbeat_store_liveness_failures",
        "Times a Redis connection was dropped because it did not answer a PING in time",
        labels=["link"],
    )
    for link, count in store.liveness_failures.items():  # type: ignore[attr-defined]
        liveness.add_metric([link], count)
    yield liveness


class Metrics:
    """The registry of one service, and what the HTTP layer reports into it."""

    def __init__(self, hub: Hub, store: Store) -> None:
        self.registry = CollectorRegistry()
        self._live = _LiveState(hub, store)
        self.registry.register(self._live)
        self.pings_accepted = Counter(
            "heartbeat_pings_accepted", "Pings stored and published",
            registry=self.registry,
        )
        self.pings_rejected = Counter(
            "heartbeat_pings_rejected", "Pings refused, by HTTP status code",
            ["code"], registry=self.registry,
        )
        self.ping_seconds = Histogram(
            "heartbeat_ping_seconds",
            "Time from a ping's complete request to its answer",
            buckets=_PING_BUCKETS, registry=self.registry,
        )

    def watch_webhooks(self, webhooks: Webhooks) -> None:
        self._live.webhooks = webhooks

    def ping_answered(self, code: int, seconds: float | None) -> None:
        """Count one ``POST /ping`` answer; ``seconds`` is None when refused unread."""
        if code == 200:
            self.pings_accepted.inc()
        else:
            self.pings_rejected.labels(str(code)).inc()
        if seconds is not None:
            self.ping_seconds.observe(seconds)

    def render(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"Cache-Control", b"no-store")
        return generate_latest(self.registry)
