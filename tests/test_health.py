"""``/health``: what a load balancer probes, with no credentials."""

from __future__ import annotations

import json

from tests.ops_support import connect, fake_service, get_bytes


def probe(service) -> tuple[bytes, dict]:
    channel, transport = connect(service)
    channel.dataReceived(get_bytes("/health"))
    head, _, body = transport.value().partition(b"\r\n\r\n")
    # One chunk, then the terminating one.
    size, _, rest = body.partition(b"\r\n")
    return head, json.loads(rest[: int(size, 16)])


def test_ok_with_the_in_process_store_and_no_credentials():
    service, _ = fake_service(JWT_SECRET="secret")
    head, body = probe(service)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Type: application/json" in head
    assert body == {"status": "ok", "store": "memory", "streams": 0, "users": 0}


def test_counts_open_streams():
    service, _ = fake_service()
    channel, _ = connect(service)
    channel.dataReceived(get_bytes("/subscribe/alice"))
    assert probe(service)[1]["streams"] == 1


def test_503_with_retry_after_while_the_store_is_unreachable():
    service, _ = fake_service()
    service.store.available = False
    head, body = probe(service)
    assert head.startswith(b"HTTP/1.1 503")
    assert b"Retry-After: 1" in head
    assert b"Content-Type: application/json" in head
    assert body["status"] == "unavailable"
    assert body["store"] == "memory"
    assert "unreachable" in body["error"]
