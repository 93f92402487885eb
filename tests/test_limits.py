"""Every limit a client can run into: each a setting, each answered with JSON."""

from __future__ import annotations

import pytest

from heartbeat.daemon.config import load_settings
from tests.helpers.claims import claim
from tests.helpers.in_memory import Wire, request_bytes, stored_pings


def assert_refused(response, status: int) -> None:
    assert response is not None and response.status == status, response
    assert response.headers[b"content-type"] == b"application/json"
    assert response.json()["error"]


def test_defaults():
    settings = load_settings({}, {}, {})
    assert (settings.max_streams, settings.max_header_bytes, settings.max_userid_length,
            settings.request_timeout, settings.stream_blocked_timeout) == (10000, 16384, 256, 10, 60)


@pytest.mark.parametrize("name,value", [
    ("MAX_STREAMS", "0"), ("MAX_HEADER_BYTES", "100"), ("MAX_USERID_LENGTH", "x"),
    ("REQUEST_TIMEOUT", "-1"), ("STREAM_BLOCKED_TIMEOUT", "0"),
])
def test_bad_limit_names_the_setting(name, value):
    with pytest.raises(Exception, match=name):
        load_settings({}, {name: value}, {})


def test_open_streams_beyond_the_limit_get_503():
    wire = Wire({"MAX_STREAMS": "2"})
    first, second = wire.connect(), wire.connect()
    for conn in (first, second):
        conn.send(request_bytes("GET", "/subscribe/alice"))
        assert conn.response().status == 200
    refused = wire.request("GET", "/subscribe/bob")
    assert_refused(refused, 503)
    assert refused.headers[b"retry-after"]
    assert len(wire.hub.streams) == 2
    first.close()
    assert wire.request("GET", "/subscribe/bob").status == 200


def test_headers_over_the_limit_get_431():
    wire = Wire({"MAX_HEADER_BYTES": "2048"})
    assert wire.ping("alice", headers={"X-Filler": "f" * 1800}).status == 200
    # One header line too long, and many lines together too long.
    assert_refused(wire.ping("alice", headers={"X-Filler": "f" * 2100}), 431)
    many = {f"X-Filler-{i}": "f" * 100 for i in range(25)}
    assert_refused(wire.ping("alice", headers=many), 431)
    assert_refused(wire.request("GET", "/subscribe/" + "a" * 2100), 431)


def test_an_endless_header_line_is_refused_without_waiting_for_its_end():
    wire = Wire({"MAX_HEADER_BYTES": "2048"})
    conn = wire.connect()
    conn.send(b"GET /subscribe/alice HTTP/1.1\r\nX-Filler: " + b"f" * 3000)
    assert_refused(conn.response(), 431)
    assert conn.transport.write_closed


def test_userid_over_the_limit_gets_400():
    wire = Wire({"MAX_USERID_LENGTH": "8"})
    assert wire.ping("a" * 8).status == 200
    assert_refused(wire.ping("a" * 9), 400)
    # Characters, not bytes: eight non-ASCII characters are fine.
    assert wire.ping("é" * 8).status == 200
    assert wire.request("GET", "/subscribe/" + "a" * 8).status == 200
    assert_refused(wire.request("GET", "/subscribe/" + "a" * 9), 400)
    assert_refused(wire.request("GET", "/subscribe/" + "a" * 9 + "/client/c1"), 400)
    assert_refused(wire.request("GET", "/subscribe?user=bob&user=" + "a" * 9), 400)
    assert_refused(wire.request("GET", "/status?user=" + "a" * 9), 400)
    assert wire.request("GET", "/status?user=" + "a" * 8).status == 200


def test_body_over_4096_bytes_gets_413_declared_or_chunked():
    wire = Wire()
    assert_refused(wire.ping("alice", b"x" * 4097), 413)
    conn = wire.connect()
    chunk = b"x" * 3000
    conn.send(b"POST /ping HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
              b"X-User-Claim: " + claim("alice").encode() + b"\r\n\r\n"
              + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 2 + b"0\r\n\r\n")
    assert_refused(conn.response(), 413)
    assert stored_pings(wire.store) == {}


def test_slow_headers_get_408_even_when_each_byte_comes_in_time():
    """Slowloris: a byte a second resets Twisted's idle timer, not ours."""
    wire = Wire({"REQUEST_TIMEOUT": "10"})
    conn = wire.connect()
    for byte in b"GET /subscribe/alice HTTP/1.1\r\nX-A: b":
        conn.send(bytes([byte]))
        wire.clock.advance(1)
        if conn.response() is not None:
            break
    assert_refused(conn.response(), 408)
    assert wire.clock.seconds() == 10
    assert conn.transport.write_closed


def test_silent_connection_gets_408():
    wire = Wire({"REQUEST_TIMEOUT": "3"})
    conn = wire.connect()
    wire.clock.advance(2.9)
    assert conn.transport.value() == b""
    wire.clock.advance(0.2)
    assert_refused(conn.response(), 408)


def test_request_timeout_covers_each_request_on_a_kept_alive_connection():
    wire = Wire({"REQUEST_TIMEOUT": "3"})
    conn = wire.connect()
    conn.send(request_bytes("POST", "/ping", {"X-User-Claim": claim("alice")}, b"1"))
    assert conn.response().status == 200
    # Idle between requests is Twisted's idle timeout's business, not ours.
    wire.clock.advance(30)
    assert not conn.transport.write_closed
    conn.transport.clear()
    conn.send(b"POST /ping HTTP/1.1\r\n")
    wire.clock.advance(3)
    assert_refused(conn.response(), 408)


def test_an_open_stream_is_not_timed_out():
    wire = Wire({"REQUEST_TIMEOUT": "3"})
    conn = wire.connect()
    conn.send(request_bytes("GET", "/subscribe/alice"))
    wire.clock.advance(100)
    assert conn.response().status == 200
    assert not conn.transport.write_closed


def test_malformed_request_gets_json_400():
    wire = Wire()
    conn = wire.connect()
    conn.send(b"NOT HTTP AT ALL\r\n\r\n")
    assert_refused(conn.response(), 400)


def test_non_utf8_path_gets_json_400():
    assert_refused(Wire().request("GET", "/subscribe/%FF"), 400)
