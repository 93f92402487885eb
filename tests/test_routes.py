"""The route table: each route once, its methods the edge's 404/405, and new kinds of route."""

from __future__ import annotations

import pytest

from heartbeat.web.routes import ROUTES
from heartbeat.web.table import CALL, KLEIN, STREAM, Route, RouteTable
from tests.helpers.claims import claim
from tests.helpers.in_memory import Wire, events, request_bytes


def test_a_wrong_method_is_405_with_allow_from_the_table():
    wire = Wire()
    for method, path, allow in [("GET", "/ping", b"POST"), ("POST", "/subscribe/alice", b"GET, HEAD"),
                                ("DELETE", "/status", b"GET, HEAD, POST"), ("PUT", "/subscribe", b"GET, HEAD, POST")]:
        answer = wire.request(method, path)
        assert (answer.status, answer.headers[b"allow"]) == (405, allow), (method, path)
        assert answer.json()["error"] == "method not allowed"


@pytest.mark.parametrize("path", ["/nowhere", "/subscribe/", "/subscribe/a/b", "/subscribe//client/c", "/ping/"])
def test_a_path_no_route_declares_is_404(path):
    answer = Wire().request("GET", path)
    assert answer.status == 404 and answer.json() == {"error": "no such path"}


def test_a_path_parameter_is_percent_decoded_and_must_be_utf8():
    wire = Wire()
    wire.ping("élodie", b"4")
    conn = wire.connect()
    conn.send(request_bytes("GET", "/subscribe/%C3%A9lodie"))
    assert events(conn.response())[0]["status"] == "4"
    assert wire.request("GET", "/subscribe/%FF").status == 400


def test_a_method_declared_twice_for_a_path_is_refused():
    with pytest.raises(ValueError, match="POST /ping is declared twice"):
        RouteTable([*ROUTES.routes, Route("/ping", ("POST",), lambda *a: None, KLEIN)])


def test_klein_serves_only_the_cold_routes():
    assert {route.path for route in ROUTES.cold()} == {
        "/status", "/changes", "/health", "/metrics", "/livez", "/readyz", "/online",
        "/users/<path:userid>", "/users/<path:userid>/disconnect"}
    assert all(route.serve in (CALL, STREAM) for route in ROUTES.routes if route.path.startswith(("/ping", "/leave", "/subscribe")))


def test_post_subscribe_is_a_stream_with_a_json_body():
    wire = Wire()
    wire.ping("alice", b"6")
    conn = wire.connect()
    conn.send(request_bytes("POST", "/subscribe", {"Content-Type": "application/json"},
                            b'{"users": ["alice", "bob"]}'))
    stream = conn.response()
    assert stream.status == 200 and stream.headers[b"content-type"] == b"text/event-stream"
    assert events(stream)[0]["userid"] == "alice"
    assert wire.request("POST", "/subscribe", body=b"[]").status == 400
    assert wire.request("DELETE", "/subscribe").headers[b"allow"] == b"GET, HEAD, POST"


def test_a_ping_and_every_stream_carry_the_presence_timeout():
    wire = Wire({"PRESENCE_TIMEOUT": "45"})
    assert wire.ping("alice").headers[b"heartbeat-presence-timeout"] == b"45"
    for method, path in [("GET", "/subscribe/alice"), ("GET", "/subscribe/alice/client/c1"),
                         ("GET", "/subscribe?user=alice"), ("HEAD", "/subscribe/alice")]:
        conn = wire.connect()
        conn.send(request_bytes(method, path))
        assert conn.response().headers[b"heartbeat-presence-timeout"] == b"45", (method, path)
    conn = wire.connect()
    conn.send(b"GET /subscribe/alice HTTP/1.0\r\n\r\n")
    assert b"\r\nHeartbeat-Presence-Timeout: 45\r\n" in conn.take()
    assert b"heartbeat-presence-timeout" not in wire.request("GET", "/health").headers
    refused = wire.request("POST", "/ping", {"X-User-Claim": claim("alice")}, b"")
    assert refused.status == 400 and b"heartbeat-presence-timeout" not in refused.headers
