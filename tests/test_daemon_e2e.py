"""The real daemon over real sockets: every route, body style and error."""

import http.client
import json
import socket

import pytest

from tests.helpers.claims import claim
from tests.helpers.clients import SSEClient, get, post_ping
from tests.helpers.in_memory import parse_response, request_bytes
from tests.helpers.processes import free_port

FORM = "application/x-www-form-urlencoded"


# post_ping pings as the device "c1": the device route follows it.
@pytest.mark.parametrize("path", ["/subscribe/alice", "/subscribe/alice/client/c1?token=t"])
def test_both_subscribe_routes_stream_stored_then_live(daemon, path):
    assert post_ping(daemon.port, '{"status": "0"}', content_type="application/json")[0] == 200
    stream = SSEClient(daemon.port, path)
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream"
    assert stream.headers["cache-control"] == "no-cache"
    assert stream.headers["x-accel-buffering"] == "no"
    first = stream.event()
    assert first["userid"] == "alice" and first["status"] == "0"
    assert isinstance(first["time"], int)
    for body, ctype, status in [
        ('{"status": 1}', "application/json", "1"),
        ('{"status": "2"}', FORM, "2"),          # what curl -d sends
        ("status=3", FORM, "3"),
        ("away\n", "text/plain", "away"),
        ("0", None, "0"),
    ]:
        assert post_ping(daemon.port, body, content_type=ctype)[0] == 200
        event = stream.event()
        assert (event["userid"], event["status"]) == ("alice", status)
    stream.close()


def test_ping_answers_200_with_empty_body(daemon):
    status, headers, body = post_ping(daemon.port, "status=1", content_type=FORM)
    assert (status, body, headers.get("content-length")) == (200, b"", "0")


def test_streams_only_get_their_users_pings(daemon):
    alice = SSEClient(daemon.port, "/subscribe/alice")
    bob = SSEClient(daemon.port, "/subscribe/bob")
    post_ping(daemon.port, "1", userid="bob")
    assert bob.event()["userid"] == "bob"
    alice.no_event(0.3)


@pytest.mark.parametrize("body, ctype, headers, code", [
    ("1", None, {"X-User-Claim": "not json"}, 400),
    ("1", None, {"X-User-Claim": '{"clientid": "c"}'}, 400),
    ("1", None, {"X-User-Claim": '{"userid": ""}'}, 400),
    ("1", None, {"X-User-Claim": '{"userid": 7}'}, 400),
    ("1", None, {"X-User-Claim": '["alice"]'}, 400),
    ("", None, {}, 400),
    ("[1]", "application/json", {}, 400),
    ('{"status": ', None, {}, 400),
    ("{}", "application/json", {}, 400),
    ('{"status": ""}', "application/json", {}, 400),
    ("status=", FORM, {}, 400),
    ("x" * 65, "text/plain", {}, 400),
    ("a\x01b", "text/plain", {}, 400),
    ("x" * 4097, "text/plain", {}, 413),
])
def test_bad_pings_get_json_errors_and_store_nothing(daemon, body, ctype, headers, code):
    post_ping(daemon.port, "kept")
    status, response_headers, response_body = post_ping(
        daemon.port, body, content_type=ctype, headers=headers)
    assert status == code
    assert response_headers["content-type"] == "application/json"
    assert json.loads(response_body)["error"]
    stream = SSEClient(daemon.port, "/subscribe/alice")
    assert stream.event()["status"] == "kept"


def test_missing_claim_is_400(daemon):
    status, _, body = post_ping(daemon.port, "1", userid=None)
    assert status == 400 and "X-User-Claim" in json.loads(body)["error"]


def test_oversized_body_is_refused_before_it_is_sent(daemon):
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
    sock.sendall(b"POST /ping HTTP/1.1\r\nHost: x\r\nX-User-Claim: {\"userid\":\"a\"}\r\n"
                 b"Content-Length: 1000000\r\n\r\n")
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'{"error": ' in answer
    sock.close()


def test_unknown_path_404_and_wrong_method_405(daemon):
    status, headers, body = get(daemon.port, "/nothing/here")
    assert status == 404 and json.loads(body)["error"]
    status, headers, body = get(daemon.port, "/ping")
    assert status == 405 and json.loads(body)["error"] and headers["allow"] == "POST"
    status, _, body = get(daemon.port, "/subscribe/alice", method="POST")
    assert status == 405 and json.loads(body)["error"]


def test_keepalive_comments_arrive(start_daemon):
    daemon = start_daemon(["--keepalive", "0.2"])
    stream = SSEClient(daemon.port, "/subscribe/alice")
    assert stream.frame(timeout=3) == b"retry: 2000\n"
    assert stream.frame(timeout=3) == b":\n"
    assert stream.frame(timeout=3) == b":\n"


def _responses(sock: socket.socket, count: int) -> list:
    """The next ``count`` complete responses on ``sock``, in order."""
    data, found = b"", []
    while len(found) < count:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(found)} responses"
        data += chunk
        while (response := parse_response(data)) is not None and response.complete:
            found.append(response)
            data = response.rest
    return found


def test_pipelined_requests_are_answered_in_order(daemon):
    ping = {"X-User-Claim": claim("alice"), "Content-Type": "text/plain"}
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        sock.sendall(request_bytes("POST", "/ping", ping, b"1")
                     + request_bytes("GET", "/status?user=alice")
                     + request_bytes("POST", "/ping", ping, b"2")
                     + request_bytes("GET", "/status?user=alice")
                     + request_bytes("GET", "/health"))
        answers = _responses(sock, 5)
    assert [r.status for r in answers] == [200] * 5
    assert [answers[i].json()["alice"]["status"] for i in (1, 3)] == ["1", "2"]
    assert answers[4].json()["status"] == "ok"


@pytest.mark.parametrize("path, body", [("/ping", b"1"), ("/health", b"")])
def test_http_1_0_is_answered_then_closed(daemon, path, body):
    method = "POST" if body else "GET"
    request = request_bytes(method, path, {"X-User-Claim": claim("alice")}, body)
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        sock.sendall(request.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1))
        data = b""
        while chunk := sock.recv(65536):  # until the daemon closes
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") or data.startswith(b"HTTP/1.0 200 ")
    assert parse_response(data).complete


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) here")
def test_ping_and_status_over_ipv6(start_daemon):
    port = free_port()
    daemon = start_daemon(port=port, healthy=False, listen=rf"tcp6:{port}:interface=\:\:1",
                          host="::1")
    conn = http.client.HTTPConnection("::1", port, timeout=10)
    conn.request("POST", "/ping", body=b"1", headers={"X-User-Claim": claim("alice")})
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"")
    conn.request("GET", "/status?user=alice")
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["alice"]["status"] == "1"
    conn.close()
    assert "LISTEN=tcp6:" in daemon.output()
