"""/health, /metrics and the logs of a real daemon, over real sockets."""

from __future__ import annotations

import json

import jwt
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.clients import SSEClient, get, post_ping
from tests.helpers.waiting import wait_for

SECRET = "a-long-enough-hs256-secret-for-the-tests"


def scrape(port: int) -> dict[str, float]:
    status, headers, body = get(port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    return {
        s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_health_and_metrics_of_a_running_daemon(start_daemon):
    """Under JWT auth, so /health and /metrics are shown to need no credentials."""
    daemon = start_daemon(env={"JWT_SECRET": SECRET})
    status, headers, body = get(daemon.port, "/health")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["store"] == "sqlite"

    token = jwt.encode({"userid": "alice", "clientid": "c1"}, SECRET, algorithm="HS256")
    streams = [SSEClient(daemon.port, f"/subscribe/{user}?token={token}")
               for user in ("alice", "alice", "bob")]
    bearer = {"Authorization": f"Bearer {token}"}
    assert post_ping(daemon.port, "1", content_type="text/plain", headers=bearer)[0] == 200
    assert streams[0].event()["status"] == "1" and streams[1].event()["status"] == "1"
    assert post_ping(daemon.port, "", content_type="text/plain", headers=bearer)[0] == 400
    assert post_ping(daemon.port, "1", content_type="text/plain")[0] == 401

    got = scrape(daemon.port)
    assert got["heartbeat_open_streams"] == 3
    assert got["heartbeat_subscribed_users"] == 2
    assert got["heartbeat_pings_accepted_total"] == 1
    assert got["heartbeat_pings_rejected_total{code=400}"] == 1
    assert got["heartbeat_pings_rejected_total{code=401}"] == 1
    assert got["heartbeat_events_delivered_total"] == 2
    assert got["heartbeat_store_available"] == 1
    assert got["heartbeat_ping_seconds_count"] == 3
    for stream in streams:
        stream.close()

    log = daemon.output()
    start_line = next(line for line in log.splitlines() if "heartbeat starting with" in line)
    assert "JWT_SECRET=***" in start_line and SECRET not in log
    assert "LISTEN=tcp:" in start_line


def test_no_log_line_per_ping(daemon):
    assert post_ping(daemon.port, "0", content_type="text/plain")[0] == 200  # warm up
    before = daemon.output().count("\n")
    for _ in range(20):
        assert post_ping(daemon.port, "0", content_type="text/plain")[0] == 200
    assert get(daemon.port, "/health")[0] == 200  # a request after the pings, so their logging is done
    assert daemon.output().count("\n") == before


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_logs_by_option(start_daemon):
    daemon = start_daemon(["--log-format", "json"])
    events = _json_lines(daemon.output())
    assert any(e.get("log_format", "").startswith("heartbeat starting") for e in events)
    assert any(e.get("settings", {}).get("LOG_FORMAT") == "json" for e in events)


def test_json_logs_by_environment(start_daemon):
    daemon = start_daemon(env={"LOG_FORMAT": "json"})
    daemon.stop()
    events = _json_lines(daemon.output())
    assert any(e.get("log_format") == "heartbeat stopped" for e in events)


def test_health_and_store_metrics_follow_redis(redis_server, start_daemon):
    daemon = start_daemon(["--redis", redis_server.address])
    wait_for(lambda: get(daemon.port, "/health")[0] == 200)
    assert json.loads(get(daemon.port, "/health")[2])["store"] == "redis"

    redis_server.stop()
    wait_for(lambda: get(daemon.port, "/health")[0] == 503)
    status, headers, body = get(daemon.port, "/health")
    assert headers["retry-after"].isdigit() and headers["content-type"] == "application/json"
    assert json.loads(body)["status"] == "unavailable" and json.loads(body)["error"]
    assert scrape(daemon.port)["heartbeat_store_available"] == 0

    redis_server.start()
    wait_for(lambda: get(daemon.port, "/health")[0] == 200)
    got = scrape(daemon.port)
    assert got["heartbeat_store_available"] == 1
    assert got["heartbeat_store_reconnects_total{link=commands}"] == 1
    assert got["heartbeat_store_reconnects_total{link=subscriber}"] == 1
    log = daemon.output()
    assert "redis commands lost" in log and log.count("redis commands connected") == 2
