"""``/metrics``: what each count means, fed by real requests on a fake reactor."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from heartbeat.metrics import STORE_RECONNECTS
from tests.ops_support import connect, fake_service, get_bytes, ping_bytes


def samples(service) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape, through the real route, keyed by name and labels."""
    channel, transport = connect(service)
    channel.dataReceived(get_bytes("/metrics"))
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert b"Content-Type: text/plain; version=" in head
    text = _dechunk(body).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, body = body.partition(b"\r\n")
        n = int(size, 16)
        out, body = out + body[:n], body[n + 2:]
    return out


def test_pings_accepted_rejected_and_timed():
    service, reactor = fake_service()
    channel, transport = connect(service)
    channel.dataReceived(ping_bytes("1"))
    channel.dataReceived(ping_bytes(""))  # empty status: 400
    channel.dataReceived(b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")  # no claim
    # A ping whose store answers 0.25 s later.
    pending: Deferred[None] = Deferred()
    service.store.ping = lambda ping: pending
    channel.dataReceived(ping_bytes("2"))
    reactor.advance(0.25)
    pending.callback(None)

    got = samples(service)
    assert got[("heartbeat_pings_accepted_total", ())] == 2
    assert got[("heartbeat_pings_rejected_total", (("code", "400"),))] == 2
    assert got[("heartbeat_ping_seconds_count", ())] == 4
    assert got[("heartbeat_ping_seconds_sum", ())] == 0.25
    assert got[("heartbeat_ping_seconds_bucket", (("le", "0.1"),))] == 3
    assert b"HTTP/1.1 200" in transport.value()


def test_oversized_ping_refused_unread_is_counted():
    service, _ = fake_service()
    channel, _ = connect(service)
    channel.dataReceived(b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
    got = samples(service)
    assert got[("heartbeat_pings_rejected_total", (("code", "413"),))] == 1
    assert got[("heartbeat_ping_seconds_count", ())] == 0


def test_other_requests_are_not_pings():
    service, _ = fake_service()
    channel, _ = connect(service)
    channel.dataReceived(get_bytes("/ping"))  # 405
    channel.dataReceived(get_bytes("/health"))
    got = samples(service)
    assert got[("heartbeat_ping_seconds_count", ())] == 0
    assert got[("heartbeat_pings_accepted_total", ())] == 0
    assert not any(name == "heartbeat_pings_rejected_total" for name, _ in got)


def test_streams_users_events_and_keepalives():
    service, _ = fake_service()
    streams = []
    for path in ("/subscribe/alice", "/subscribe/alice", "/subscribe/bob"):
        channel, _ = connect(service)
        channel.dataReceived(get_bytes(path))
        streams.append(channel)
    got = samples(service)
    assert got[("heartbeat_open_streams", ())] == 3
    assert got[("heartbeat_subscribed_users", ())] == 2

    pinger, _ = connect(service)
    pinger.dataReceived(ping_bytes("0", "alice"))  # one ping, fanned out to 2 streams
    service.hub.keepalive()
    got = samples(service)
    assert got[("heartbeat_events_delivered_total", ())] == 2
    assert got[("heartbeat_keepalives_sent_total", ())] == 3

    # A stream opened now gets the stored ping: one more event delivered.
    late, _ = connect(service)
    late.dataReceived(get_bytes("/subscribe/alice"))
    assert samples(service)[("heartbeat_events_delivered_total", ())] == 3

    streams[2].connectionLost(Failure(ConnectionDone()))  # bob's watcher goes away
    got = samples(service)
    assert got[("heartbeat_open_streams", ())] == 3
    assert got[("heartbeat_subscribed_users", ())] == 1
    service.hub.close_all()
    got = samples(service)
    assert got[("heartbeat_open_streams", ())] == 0
    assert got[("heartbeat_subscribed_users", ())] == 0


def test_store_state_and_reconnects():
    service, _ = fake_service()
    assert samples(service)[("heartbeat_store_available", ())] == 1
    service.store.available = False
    key = ("heartbeat_store_reconnects_total", (("link", "subscriber"),))
    before = samples(service)[key]
    STORE_RECONNECTS.labels("subscriber").inc()
    got = samples(service)
    assert got[("heartbeat_store_available", ())] == 0
    assert got[key] == before + 1


def test_each_service_counts_its_own_pings():
    first, _ = fake_service()
    second, _ = fake_service()
    channel, _ = connect(first)
    channel.dataReceived(ping_bytes())
    assert samples(first)[("heartbeat_pings_accepted_total", ())] == 1
    assert samples(second)[("heartbeat_pings_accepted_total", ())] == 0
