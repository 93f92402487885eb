"""``GET /health``, ``/livez`` and ``/readyz``: what probes and load balancers ask.

They answer from local state only (no store round trip), so probing is
free, and never ask for credentials: a load balancer has none. ``/livez``
says only that the event loop runs — an orchestrator restarting every
instance during a Redis outage would cut every stream for nothing;
``/readyz`` says whether to send this instance clients: the store
reachable, and not stopping (it turns 503 first thing on SIGTERM).
"""

from __future__ import annotations

import json
import os

from twisted.web.iweb import IRequest

from heartbeat.core.hub import Hub
from heartbeat.core.store_contract import Store, StoreUnavailable
from heartbeat.web.errors import as_http


def liveness(request: IRequest) -> bytes:
    """200 whenever the process can answer at all, whatever its store."""
    return _answer(request, {"status": "ok"})


def readiness(request: IRequest, store: Store, stopping: bool) -> bytes:
    """200 while the store takes pings, has loaded presence (the embedded store
    reads its online users after the port opens) and the instance is not
    stopping; 503 otherwise."""
    if stopping:
        request.setResponseCode(503)
        return _answer(request, {"status": "stopping"})
    if not store.loaded:
        request.setResponseCode(503)
        return _answer(request, {"status": "loading"})
    if not store.available:
        unavailable = as_http(StoreUnavailable())
        request.setResponseCode(unavailable.code)
        return _answer(request, {"status": "unavailable", "error": unavailable.message})
    return _answer(request, {"status": "ok"})


def _answer(request: IRequest, body: dict[str, object]) -> bytes:
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body).encode()


def health(request: IRequest, store: Store, hub: Hub) -> bytes:
    """200 while the store takes pings; 503 with ``Retry-After`` while it is unreachable."""
    body: dict[str, object] = {
        "status": "ok",
        "store": store.kind,
        "streams": len(hub.streams),
        "users": hub.users,
        # Which process answered: with WORKERS > 1 several share the port.
        "pid": os.getpid(),
    }
    if not store.available:
        unavailable = as_http(StoreUnavailable())
        request.setResponseCode(unavailable.code)
        for name, value in unavailable.headers.items():
            request.setHeader(name, value)
        body["status"] = "unavailable"
        body["error"] = unavailable.message
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body).encode()
