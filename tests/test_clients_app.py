"""The client-facing routes through the whole in-memory service: /status, the user rules, CORS."""

from __future__ import annotations

import json
from typing import Any

import pytest

from heartbeat.core.presence import Ping
from tests.helpers.in_memory import Wire

ORIGIN = "https://chat.example"


def make_client(**env: str) -> tuple[Wire, Any]:
    wire = Wire(env)
    return wire, wire.store


def call(client: Wire, method: str, url: str,
         headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    response = client.request(method, url, headers)
    return (response.status, {k.decode(): v.decode() for k, v in response.headers.items()},
            response.body)


def test_status_answers_stored_pings_and_null_in_the_order_asked():
    client, store = make_client()
    store.ping(Ping("bob", 1700000000, "1"))
    store.ping(Ping("élodie", 1700000005, "2"))
    code, headers, body = call(client, "GET", "/status?user=nobody&user=bob&user=%C3%A9lodie&user=bob")
    assert code == 200
    assert headers["content-type"] == "application/json"
    assert list(json.loads(body).items()) == [
        ("nobody", None),
        ("bob", {"time": 1700000000, "status": "1", "online": True,
                 "devices": {"": {"time": 1700000000, "status": "1", "online": True}}}),
        ("élodie", {"time": 1700000005, "status": "2", "online": True,
                    "devices": {"": {"time": 1700000005, "status": "2", "online": True}}}),
    ]


def test_status_reads_the_store_once_for_all_users():
    client, store = make_client()
    calls = []
    get = store.get
    store.get = lambda userids: calls.append(tuple(userids)) or get(userids)
    assert call(client, "GET", "/status?user=a&user=b&user=c")[0] == 200
    assert calls == [("a", "b", "c")]


@pytest.mark.parametrize("path", ["/status", "/subscribe"])
@pytest.mark.parametrize("query, message", [
    ("", "name at least one user"),
    ("?users=a", "name at least one user"),
    ("?user=", "must not be empty"),
    ("?user=a&user=", "must not be empty"),
    ("?user=%FF", "UTF-8"),
    ("?" + "&".join(f"user=u{i}" for i in range(4)), "at most 3 users per request, got 4"),
])
def test_bad_user_lists_are_400_json(path, query, message):
    client, _ = make_client(MAX_USERS_PER_STREAM="3")
    code, headers, body = call(client, "GET", path + query)
    assert code == 400
    assert headers["content-type"] == "application/json"
    assert message in json.loads(body)["error"]


def test_repeated_users_count_once_against_the_limit():
    client, _ = make_client(MAX_USERS_PER_STREAM="3")
    query = "&".join(f"user=u{i % 3}" for i in range(10))
    code, _, body = call(client, "GET", "/status?" + query)
    assert code == 200
    assert list(json.loads(body)) == ["u0", "u1", "u2"]


def test_default_limit_is_256_users():
    client, _ = make_client()
    query = "&".join(f"user=u{i}" for i in range(256))
    assert call(client, "GET", "/status?" + query)[0] == 200
    assert call(client, "GET", f"/status?{query}&user=u256")[0] == 400


# CORS

def cors_headers(headers: dict) -> dict:
    return {k: v for k, v in headers.items() if k.startswith("access-control-")}


def test_unset_cors_adds_nothing_and_options_is_not_special():
    client, _ = make_client()
    _, headers, _ = call(client, "GET", "/status?user=a", headers={"Origin": ORIGIN})
    assert cors_headers(headers) == {}
    assert "vary" not in headers
    code, headers, _ = call(client, "OPTIONS", "/ping", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert code == 405
    assert cors_headers(headers) == {}


@pytest.mark.parametrize("setting", [ORIGIN, f"https://other.example, {ORIGIN}/", "*"])
def test_matching_origin_is_echoed_with_vary(setting):
    client, _ = make_client(CORS_ORIGINS=setting)
    code, headers, _ = call(client, "GET", "/status?user=a", headers={"Origin": ORIGIN})
    assert code == 200
    assert headers["access-control-allow-origin"] == ORIGIN
    assert headers["vary"] == "Origin"
    # What a fetch-based client reads on answers: a 503's wait, the presence timeout.
    exposed = {h.strip().lower() for h in headers["access-control-expose-headers"].split(",")}
    assert exposed == {"retry-after", "heartbeat-presence-timeout"}


def test_non_matching_origin_gets_no_cors_headers():
    client, _ = make_client(CORS_ORIGINS=ORIGIN)
    for origin in ("https://evil.example", "https://chat.example:8443", "null"):
        _, headers, _ = call(client, "GET", "/status?user=a", headers={"Origin": origin})
        assert cors_headers(headers) == {}, origin
    _, headers, _ = call(client, "GET", "/status?user=a")
    assert cors_headers(headers) == {}


@pytest.mark.parametrize("path", ["/ping", "/subscribe/alice", "/status", "/no/such/path"])
def test_preflight_on_any_route_is_204_allowing_the_api_headers(path):
    client, _ = make_client(CORS_ORIGINS=ORIGIN)
    code, headers, body = call(client, "OPTIONS", path, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, x-user-claim"})
    assert (code, body) == (204, b"")
    assert headers["access-control-allow-origin"] == ORIGIN
    allowed = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
    assert allowed == {"authorization", "content-type", "x-user-claim", "last-event-id"}
    assert {"GET", "POST"} <= {m.strip() for m in headers["access-control-allow-methods"].split(",")}


def test_preflight_from_a_non_matching_origin_allows_nothing():
    client, _ = make_client(CORS_ORIGINS=ORIGIN)
    code, headers, _ = call(client, "OPTIONS", "/ping", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert code == 204
    assert cors_headers(headers) == {}


@pytest.mark.parametrize("method, path, expected", [
    ("GET", "/nowhere", 404),
    ("GET", "/ping", 405),
    ("POST", "/ping", 400),
    ("GET", "/status", 400),
])
def test_errors_carry_cors_headers_too(method, path, expected):
    client, _ = make_client(CORS_ORIGINS=ORIGIN)
    code, headers, body = call(client, method, path, headers={"Origin": ORIGIN})
    assert code == expected
    assert "error" in json.loads(body)
    assert headers["access-control-allow-origin"] == ORIGIN
    assert headers["vary"] == "Origin"
