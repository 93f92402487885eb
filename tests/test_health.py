"""``/health``: what a load balancer probes, with no credentials."""

from __future__ import annotations

import json
import os

from tests.helpers.in_memory import MemoryServer, response


def probe(server: MemoryServer) -> tuple[bytes, dict]:
    raw = server.send("GET", "/health").take()
    return raw.partition(b"\r\n\r\n")[0], json.loads(response(raw)[1])


def test_ok_with_the_in_process_store_and_no_credentials():
    server = MemoryServer(JWT_SECRET="a-long-enough-hs256-secret-for-the-tests")
    head, body = probe(server)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Type: application/json" in head
    assert body == {"status": "ok", "store": "memory", "streams": 0, "users": 0,
                    "pid": os.getpid()}


def test_counts_open_streams():
    server = MemoryServer()
    server.send("GET", "/subscribe/alice")
    assert probe(server)[1]["streams"] == 1


def test_503_with_retry_after_while_the_store_is_unreachable():
    server = MemoryServer()
    server.store.available = False
    head, body = probe(server)
    assert head.startswith(b"HTTP/1.1 503")
    assert b"Retry-After: 1" in head
    assert b"Content-Type: application/json" in head
    assert body["status"] == "unavailable"
    assert body["store"] == "memory"
    assert "unreachable" in body["error"]
