"""``/metrics``: what each count means, fed by real requests on a fake reactor."""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred

from tests.helpers.in_memory import MemoryServer, response, samples


def test_pings_accepted_rejected_and_timed():
    server = MemoryServer()
    assert server.ping_raw("alice", "1", "text/plain")[0] == 200
    assert server.ping_raw("alice", "", "text/plain")[0] == 400
    assert response(server.send("POST", "/ping", b"1").take())[0] == 400  # no claim
    # A ping whose store answers 0.25 s later.
    pending: Deferred[None] = Deferred()
    server.store.ping = lambda ping: pending
    conn = server.send("POST", "/ping", b"2", {"X-User-Claim": '{"userid": "bob"}'})
    server.clock.advance(0.25)
    pending.callback(None)
    assert conn.take().startswith(b"HTTP/1.1 200")

    got = samples(server)
    assert got[("heartbeat_pings_accepted_total", ())] == 2
    assert got[("heartbeat_pings_rejected_total", (("code", "400"),))] == 2
    assert got[("heartbeat_ping_seconds_count", ())] == 4
    assert got[("heartbeat_ping_seconds_sum", ())] == 0.25
    assert got[("heartbeat_ping_seconds_bucket", (("le", "0.1"),))] == 3


def test_oversized_ping_refused_unread_is_counted():
    server = MemoryServer()
    server.connect().send(b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
    got = samples(server)
    assert got[("heartbeat_pings_rejected_total", (("code", "413"),))] == 1
    assert got[("heartbeat_ping_seconds_count", ())] == 0


def test_other_requests_are_not_pings():
    server = MemoryServer()
    server.send("GET", "/ping")  # 405
    server.send("GET", "/health")
    got = samples(server)
    assert got[("heartbeat_ping_seconds_count", ())] == 0
    assert got[("heartbeat_pings_accepted_total", ())] == 0
    assert not any(name == "heartbeat_pings_rejected_total" for name, _ in got)


def test_streams_users_events_and_keepalives():
    server = MemoryServer()
    streams = [server.send("GET", path)
               for path in ("/subscribe/alice", "/subscribe/alice", "/subscribe/bob")]
    got = samples(server)
    assert got[("heartbeat_open_streams", ())] == 3
    assert got[("heartbeat_subscribed_users", ())] == 2

    assert server.ping_raw("alice", "0", "text/plain")[0] == 200  # fanned out to 2 streams
    server.clock.advance(server.settings.keepalive)
    got = samples(server)
    assert got[("heartbeat_events_delivered_total", ())] == 2
    assert got[("heartbeat_keepalives_sent_total", ())] == 3

    # A stream opened now gets the stored ping: one more event delivered.
    server.send("GET", "/subscribe/alice")
    assert samples(server)[("heartbeat_events_delivered_total", ())] == 3

    streams[2].close()  # bob's only watcher goes away
    got = samples(server)
    assert got[("heartbeat_open_streams", ())] == 3
    assert got[("heartbeat_subscribed_users", ())] == 1
    server.hub.close_all()
    got = samples(server)
    assert got[("heartbeat_open_streams", ())] == 0
    assert got[("heartbeat_subscribed_users", ())] == 0


def test_presence_streams_open():
    server = MemoryServer()
    assert samples(server)[("heartbeat_presence_streams", ())] == 0
    claim = {"X-User-Claim": json.dumps({"userid": "alice", "clientid": "web"})}
    streams = [server.send("GET", "/subscribe/bob?presence=0", headers=claim) for _ in range(2)]
    server.send("GET", "/subscribe/bob")
    assert samples(server)[("heartbeat_presence_streams", ())] == 2
    streams[0].close()
    assert samples(server)[("heartbeat_presence_streams", ())] == 1


def test_store_state_and_reconnects():
    server = MemoryServer()
    assert samples(server)[("heartbeat_store_available", ())] == 1
    server.store.available = False
    key = ("heartbeat_store_reconnects_total", (("link", "subscriber"),))
    server.store.reconnects["subscriber"] = 3
    got = samples(server)
    assert got[("heartbeat_store_available", ())] == 0
    assert got[key] == 3


def test_each_service_counts_its_own_pings():
    first, second = MemoryServer(), MemoryServer()
    assert first.ping_raw("alice", "1", "text/plain")[0] == 200
    assert samples(first)[("heartbeat_pings_accepted_total", ())] == 1
    assert samples(second)[("heartbeat_pings_accepted_total", ())] == 0
