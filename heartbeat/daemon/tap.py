"""twistd's entry point: options and ``makeService``, which only wires."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.interfaces import IReactorCore, IStreamServerEndpoint
from twisted.python.usage import Options as _Options
from twisted.python.usage import UsageError
from twisted.web.server import Site

from heartbeat.core.changes import ChangeFeed
from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.holder import PresenceHolder
from heartbeat.core.hub import Hub
from heartbeat.core.identity import Identity
from heartbeat.core.store_contract import Store
from heartbeat.daemon.config import SETTINGS, Settings, listen_endpoint, load_settings
from heartbeat.daemon.descriptors import fit_streams, raise_open_files_limit
from heartbeat.daemon.logs import log_observer, log_settings
from heartbeat.daemon.metrics import Metrics
from heartbeat.daemon.service import HeartbeatService, SettleGarbageCollector
from heartbeat.daemon.webhooks import Webhooks, WebhookSender, agent_post
from heartbeat.store.memory import MemoryStore
from heartbeat.store.sqlite import DatabaseUnusable, open_store
from heartbeat.web.api import Api
from heartbeat.web.edge import Edge
from heartbeat.web.klein_app import HeartbeatApp
from heartbeat.web.routes import ROUTES


class Options(_Options):
    """Every setting as a ``--option``; unset ones fall back to the environment."""

    optParameters = [
        [s.option, None, None, f"{s.help} [env {s.name}, default {s.default!r}]"]
        for s in SETTINGS
    ]


def makeService(config: Options, reactor: IReactorCore | None = None) -> IService:
    """Build the service tree; a bad setting exits with one line naming it."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    sockets = None
    try:
        settings = fit_streams(load_settings(config), raise_open_files_limit())
        if settings.workers > 1:
            from heartbeat.daemon.workers import reuseport_sockets

            description = listen_endpoint(settings.listen, settings.backlog)
            sockets = reuseport_sockets(description, settings.workers)
        if sockets:
            # The endpoint closes the fd it adopts, so the fd is the endpoint's,
            # no longer the socket object's: closing both would close whatever
            # reuses the number by then.
            primary = sockets.pop(0)
            endpoint: IStreamServerEndpoint = AdoptedStreamServerEndpoint(
                reactor, primary.detach(), primary.family
            )
        else:
            endpoint = _endpoint(reactor, settings)
    except UsageError as e:
        raise SystemExit(f"heartbeat: {e}") from None
    try:
        service = build_service(settings, reactor, endpoint)
    except DatabaseUnusable as e:
        raise SystemExit(f"heartbeat: {e}") from None
    if settings.workers > 1:
        from heartbeat.daemon.workers import WorkerPool

        pool = WorkerPool(
            reactor, settings.workers - 1, config, service.when_listening, sockets or (),
            settings.drain_seconds,
        )
        service.add_workers(pool)
    # Last child, so it runs once the rest has started.
    SettleGarbageCollector().setServiceParent(service)
    return service


def _endpoint(reactor: Any, settings: Settings) -> IStreamServerEndpoint:
    description = listen_endpoint(settings.listen, settings.backlog)
    try:
        return serverFromString(reactor, description)
    except Exception as e:  # endpoint parsers raise anything from ValueError to KeyError
        raise UsageError(f"bad setting LISTEN={settings.listen!r}: {e}") from None


def build_service(settings: Settings, reactor: Any, endpoint: Any) -> HeartbeatService:
    """The service tree of ``settings``; a ``DATABASE`` it cannot use raises ``DatabaseUnusable``."""
    log_settings(settings)
    store = make_store(settings, reactor)
    # The change feed: the in-process stores' own, or the Redis store's streams.
    feed: ChangeFeed | None = (
        store if isinstance(store, MemoryStore) else getattr(store, "change_feed", None))
    holder = PresenceHolder(store, reactor, settings.presence_timeout, settings.leave_grace)
    # The in-process stores hand the hub each change's feed position with it.
    hub = Hub(store, reactor, feed, positions=isinstance(store, MemoryStore), holder=holder,
              keepalive=settings.keepalive)
    identity = Identity(settings.jwt_secret, settings.max_userid_length)
    identity.announce()
    metrics = Metrics(hub, store)
    api = Api(store, hub, reactor, identity, settings, metrics, feed)
    site = Site(HeartbeatApp(api).resource(), reactor=reactor)
    edge = Edge(api, site, ROUTES, reactor, settings.max_header_bytes, settings.request_timeout)
    service = HeartbeatService(
        endpoint, edge, hub, store, reactor, log_observer(settings),
        settings.listen, settings.drain_seconds,
    )
    if IService.providedBy(store):
        # It connects when the service starts; HeartbeatService closes it last.
        store.setServiceParent(service)
    if feed is not None and settings.webhook_url and settings.webhook_secret:
        post = agent_post(reactor)
        webhooks = Webhooks([
            WebhookSender(feed, url, settings.webhook_secret, settings.webhook_events, reactor,
                          post, settings.changes_retention)
            for url in settings.webhook_url
        ])
        service.add_webhooks(webhooks)
        metrics.watch_webhooks(webhooks)
    return service


def make_store(settings: Settings, reactor: Any) -> Store:
    """The store ``settings`` name (also ``python -m heartbeat.admin``'s)."""
    hiding = Hiding.of(settings.hidden_statuses)
    if settings.redis is None:
        return open_store(settings.database, reactor, settings.presence_timeout, hiding,
                          settings.device_retention, changes_retention=settings.changes_retention,
                          max_devices=settings.max_devices_per_user)
    # Imported only when used: txredisapi imports the global reactor.
    from heartbeat.store.redis.store import RedisStore

    return RedisStore(settings.redis, settings.redis_prefix, reactor, settings.presence_timeout,
                      settings.redis_ca_file, settings.redis_wait_replicas, hiding,
                      retention=settings.device_retention,
                      changes_retention=settings.changes_retention,
                      max_devices=settings.max_devices_per_user)
