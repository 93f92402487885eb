"""``GET /health``: whether this instance can serve, for load balancers and probes.

It answers from local state only (no store round trip), so probing it is
free, and it never asks for credentials: a load balancer has none.
"""

from __future__ import annotations

import json
import os

from twisted.web.iweb import IRequest

from heartbeat.core.hub import Hub
from heartbeat.core.store_contract import Store, StoreUnavailable
from heartbeat.web.errors import as_http


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
