"""Multi-user streams, /status, retry and event ids against the real daemon."""

from __future__ import annotations

import json

import httpx
import httpx_sse

from tests.helpers.clients import SSEClient, get, post_ping

ORIGIN = "http://page.example:8000"


def fields(frame: bytes) -> dict[str, str]:
    """An SSE frame's fields (one line each in what heartbeat sends)."""
    return dict(line.decode().split(": ", 1) for line in frame.splitlines()
                if line and not line.startswith(b":"))


def next_event(stream: SSEClient) -> dict[str, str]:
    """The next frame that carries data, as its fields."""
    while True:
        event = fields(stream.frame())
        if "data" in event:
            return event


def test_one_stream_carries_256_users_stored_then_live(start_daemon):
    daemon = start_daemon(env={"CORS_ORIGINS": ORIGIN})
    users = [f"u{i:03}" for i in range(256)]
    for i, user in enumerate(users):
        assert post_ping(daemon.port, str(i % 4), userid=user)[0] == 200
    query = "&".join(f"user={u}" for u in users + users[:10])  # repeats count once
    stream = SSEClient(daemon.port, "/subscribe?" + query, {"Origin": ORIGIN})
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream"
    assert stream.headers["access-control-allow-origin"] == ORIGIN
    assert fields(stream.frame()) == {"retry": "2000"}
    stored = {}
    for _ in users:
        event = next_event(stream)
        stored[json.loads(event["data"])["userid"]] = json.loads(event["data"])["status"]
    assert stored == {user: str(i % 4) for i, user in enumerate(users)}
    for user in (users[-1], users[0], users[128]):
        assert post_ping(daemon.port, "away", userid=user)[0] == 200
        assert json.loads(next_event(stream)["data"])["userid"] == user
    status, _, body = get(daemon.port, f"/subscribe?{query}&user=u256")
    assert status == 400 and "at most 256" in json.loads(body)["error"]
    stream.close()


def test_status_reads_stored_pings(daemon):
    assert post_ping(daemon.port, "1", userid="bob")[0] == 200
    status, headers, body = get(daemon.port, "/status?user=bob&user=carol")
    assert status == 200 and headers["content-type"] == "application/json"
    data = json.loads(body)
    assert data["carol"] is None
    assert data["bob"]["status"] == "1" and isinstance(data["bob"]["time"], int)


def test_last_event_id_spares_the_ping_the_client_already_has(daemon):
    post_ping(daemon.port, "0", userid="alice")
    post_ping(daemon.port, "1", userid="bob")
    first = SSEClient(daemon.port, "/subscribe?user=alice&user=bob")
    ids = {}
    for _ in range(2):
        event = next_event(first)
        ids[json.loads(event["data"])["userid"]] = event["id"]
    first.close()
    assert ids["alice"] != ids["bob"]

    # What a browser does after a drop: reconnect with the last id it saw.
    again = SSEClient(daemon.port, "/subscribe?user=alice&user=bob",
                      {"Last-Event-ID": ids["bob"]})
    assert json.loads(next_event(again)["data"])["userid"] == "alice"
    again.no_event()
    post_ping(daemon.port, "2", userid="bob")
    live = next_event(again)
    assert json.loads(live["data"])["status"] == "2" and live["id"] != ids["bob"]
    again.close()

    compat = SSEClient(daemon.port, "/subscribe/alice", {"Last-Event-ID": ids["alice"]})
    compat.no_event()
    compat.close()
    stale = SSEClient(daemon.port, "/subscribe/bob", {"Last-Event-ID": ids["bob"]})
    assert json.loads(next_event(stale)["data"])["status"] == "2"
    stale.close()


def test_cors_on_a_real_preflight_and_stream(start_daemon):
    daemon = start_daemon(env={"CORS_ORIGINS": ORIGIN})
    status, headers, _ = get(daemon.port, "/subscribe?user=a", method="OPTIONS", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "last-event-id"})
    assert status == 204
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "Last-Event-ID" in headers["access-control-allow-headers"]
    other = SSEClient(daemon.port, "/subscribe?user=a", {"Origin": "http://other.example"})
    assert other.status == 200 and "access-control-allow-origin" not in other.headers
    other.close()


def test_httpx_sse_reads_the_stored_then_a_live_ping_as_json(daemon):
    """The most used Python SSE client: its first item is an event, not the retry."""
    assert post_ping(daemon.port, "0", userid="alice")[0] == 200
    with httpx.Client(timeout=10) as client, httpx_sse.connect_sse(
            client, "GET", f"{daemon.url}/subscribe/alice") as source:
        items = source.iter_sse()
        first = next(items)
        assert first.json()["status"] == "0" and first.retry == 2000
        assert post_ping(daemon.port, "away", userid="alice")[0] == 200
        live = next(items)
        assert live.json()["status"] == "away" and live.id
