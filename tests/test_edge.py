"""The edge: every HTTP form SPEC §5 names, on one connection object, over in-memory transports."""

from __future__ import annotations

import json

from twisted.internet.interfaces import IProtocolNegotiationFactory

from heartbeat.web.edge import HttpConnection
from tests.helpers.claims import claim
from tests.helpers.in_memory import Wire, parse_response, request_bytes

ORIGIN = "https://chat.example"


def responses(data: bytes) -> list:
    """Every complete response in ``data``, in order."""
    found = []
    while data:
        response = parse_response(data)
        if response is None or not response.complete:
            break
        found.append(response)
        data = response.rest
    return found


def ping_bytes(userid: str, status: str = "0", version: str = "1.1", extra: str = "") -> bytes:
    body = status.encode()
    return (
        f"POST /ping HTTP/{version}\r\nHost: x\r\nX-User-Claim: {claim(userid)}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def test_pipelined_requests_are_answered_in_order_on_one_connection():
    wire = Wire()
    conn = wire.connect()
    conn.send(ping_bytes("alice", "1") + request_bytes("GET", "/status?user=alice")
              + ping_bytes("alice", "2") + request_bytes("GET", "/status?user=alice"))
    answers = responses(conn.take())
    assert [r.status for r in answers] == [200, 200, 200, 200]
    assert answers[1].json()["alice"]["status"] == "1"
    assert answers[3].json()["alice"]["status"] == "2"
    assert isinstance(conn.transport.protocol, HttpConnection)
    assert not conn.transport.disconnecting


def test_a_ping_whose_body_comes_in_a_later_read_is_answered():
    wire = Wire()
    conn = wire.connect()
    raw = ping_bytes("alice", "7")
    conn.send(raw[:-1])
    assert conn.take() == b""
    conn.send(raw[-1:])
    assert responses(conn.take())[0].status == 200
    assert wire.request("GET", "/status?user=alice").json()["alice"]["status"] == "7"


def test_http_1_0_is_closed_after_its_answer_unless_it_asks_to_keep_alive():
    wire = Wire()
    closing = wire.connect()
    closing.send(ping_bytes("alice", version="1.0"))
    answer = parse_response(closing.take())
    assert answer.status == 200 and answer.headers[b"connection"] == b"close"
    assert closing.transport.disconnecting
    kept = wire.connect()
    kept.send(ping_bytes("alice", version="1.0", extra="Connection: keep-alive\r\n") * 2)
    answers = responses(kept.take())
    assert [r.headers[b"connection"] for r in answers] == [b"keep-alive", b"keep-alive"]
    assert not kept.transport.disconnecting


def test_an_http_1_0_stream_is_not_chunked_and_ends_with_the_connection():
    wire = Wire()
    wire.ping("alice", b"3")
    conn = wire.connect()
    conn.send(b"GET /subscribe/alice HTTP/1.0\r\n\r\n")
    head, body = conn.take().split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert body.startswith(b"retry: 2000\nid: ") and b'"status":"3"' in body


def test_expect_100_continue_gets_continue_before_the_body():
    wire = Wire()
    conn = wire.connect()
    raw = ping_bytes("alice", "5", extra="Expect: 100-continue\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    conn.send(head + b"\r\n\r\n")
    assert conn.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.send(body)
    assert parse_response(conn.take()).status == 200


def test_a_chunked_ping_body_is_read():
    wire = Wire()
    conn = wire.connect()
    conn.send(
        b"POST /ping HTTP/1.1\r\nHost: x\r\nX-User-Claim: " + claim("alice").encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n4\r\n1\r\n2\r\n0\r\n\r\n"
    )
    assert parse_response(conn.take()).status == 200
    assert wire.request("GET", "/status?user=alice").json()["alice"]["status"] == "42"


def test_head_of_a_stream_says_what_get_would_and_keeps_the_connection():
    wire = Wire()
    conn = wire.connect()
    conn.send(request_bytes("HEAD", "/subscribe/alice") + ping_bytes("alice"))
    data = conn.take()
    head, rest = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"text/event-stream" in head
    assert parse_response(rest).status == 200
    assert not wire.hub.streams


def test_head_of_a_klein_route_has_no_body():
    wire = Wire()
    conn = wire.connect()
    conn.send(request_bytes("HEAD", "/status?user=alice") + request_bytes("GET", "/health"))
    data = conn.take()
    first, rest = data.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 200")
    assert parse_response(rest).json()["status"] == "ok"


H2C = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"


def test_an_h2c_upgrade_with_a_body_is_ignored_and_the_body_read():
    wire = Wire()
    conn = wire.connect()
    raw = ping_bytes("alice", "42", extra=H2C)
    conn.send(raw[:-1])  # the body's last byte in a later read
    conn.send(raw[-1:] + request_bytes("GET", "/status?user=alice"))
    answers = responses(conn.take())
    assert [r.status for r in answers] == [200, 200]
    assert answers[1].json()["alice"]["status"] == "42"
    assert not conn.transport.disconnecting


def test_an_h2c_upgrade_with_a_chunked_body_is_ignored_and_the_body_read():
    wire = Wire()
    conn = wire.connect()
    conn.send(
        b"POST /ping HTTP/1.1\r\nHost: x\r\nX-User-Claim: " + claim("alice").encode()
        + b"\r\n" + H2C.encode() + b"Transfer-Encoding: chunked\r\n\r\n1\r\n7\r\n0\r\n\r\n"
        + ping_bytes("bob", "8", extra=H2C)
    )
    assert [r.status for r in responses(conn.take())] == [200, 200]
    states = wire.request("GET", "/status?user=alice&user=bob").json()
    assert (states["alice"]["status"], states["bob"]["status"]) == ("7", "8")


def test_an_h2c_upgrade_on_a_stream_is_ignored():
    wire = Wire()
    wire.ping("alice", b"3")
    conn = wire.connect()
    conn.send(f"GET /subscribe/alice HTTP/1.1\r\nHost: x\r\n{H2C}\r\n".encode())
    head, body = conn.take().split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
    assert b'"status":"3"' in body
    assert len(wire.hub.streams) == 1


def test_a_websocket_upgrade_on_a_ping_is_ignored_and_what_follows_answered():
    wire = Wire()
    conn = wire.connect()
    upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    conn.send(ping_bytes("alice", "5", extra=upgrade) + request_bytes("GET", "/health"))
    answers = responses(conn.take())
    assert [r.status for r in answers] == [200, 200]
    assert not conn.transport.disconnecting
    assert wire.request("GET", "/status?user=alice").json()["alice"]["status"] == "5"


def test_an_early_413_carries_cors_headers():
    wire = Wire({"CORS_ORIGINS": ORIGIN})
    conn = wire.connect()
    conn.send(b"POST /ping HTTP/1.1\r\nHost: x\r\nOrigin: " + ORIGIN.encode()
              + b"\r\nContent-Length: 5000\r\n\r\n")
    answer = parse_response(conn.take())
    assert answer.status == 413
    assert answer.headers[b"access-control-allow-origin"] == ORIGIN.encode()
    assert json.loads(answer.body)["error"]


def test_a_refusal_waits_for_the_answers_before_it():
    wire = Wire()
    conn = wire.connect()
    conn.send(ping_bytes("alice") + b"NOT HTTP\r\n\r\n")
    assert [r.status for r in responses(conn.take())] == [200, 400]


def test_a_stream_keeps_the_connection_object_and_drops_what_the_client_sends():
    wire = Wire()
    conn = wire.connect()
    conn.send(request_bytes("GET", "/subscribe?user=alice&user=bob"))
    protocol = conn.transport.protocol
    assert isinstance(protocol, HttpConnection)
    (stream,) = wire.hub.streams
    assert conn.transport.producer is stream
    conn.take()
    conn.send(ping_bytes("bob"))
    assert conn.take() == b""
    wire.ping("bob", b"9")
    assert b'"status":"9"' in conn.take()
    conn.close()
    assert not wire.hub.streams and protocol not in wire.edge.connections


def test_a_device_route_path_with_escapes_is_decoded():
    wire = Wire()
    wire.ping("al ice", b"4")
    conn = wire.connect()
    conn.send(request_bytes("GET", "/subscribe/al%20ice/client/c%31"))
    data = conn.take()
    assert b'"userid":"al ice"' in data and b'"clientid":"c1"' in data


def test_a_path_that_is_not_utf8_is_a_json_400():
    wire = Wire()
    response = wire.request("GET", "/subscribe/%FF")
    assert response.status == 400 and response.json()["error"]
    response = wire.request("GET", "/st%FFatus")
    assert response.status == 400 and response.json()["error"]


def test_alpn_is_http_1_1_then_1_0_by_adaptation_only():
    """See ``Edge.__conform__``: declared, Twisted 25.5 and older would break TLS.
    HTTP/1.0 is there for a client offering only it (``curl --http1.0``), never h2."""
    edge = Wire().edge
    assert not IProtocolNegotiationFactory.providedBy(edge)
    assert IProtocolNegotiationFactory(edge).acceptableProtocols() == [b"http/1.1", b"http/1.0"]
