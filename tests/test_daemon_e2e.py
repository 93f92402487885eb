"""The real daemon over real sockets: every route, body style and error."""

import json
import socket

import pytest

from tests.support import SSEClient, get, post_ping

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
