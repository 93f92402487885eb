"""The service in memory: framing, ordering, keep-alives, cleanup, errors."""

import json

from heartbeat.core.presence import Presence
from heartbeat.core.sse import RETRY, encode_event, event_id
from tests.helpers.claims import claim
from tests.helpers.in_memory import MemoryServer, response, stored_pings


def subscribe(server: MemoryServer, path: str = "/subscribe/alice"):
    conn = server.send("GET", path)
    head = conn.take()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    return conn, head


# The end of a stream's head: the headers, then the retry: field chunk.
STREAM_START = b"\r\n\r\n" + b"%x\r\n" % len(RETRY) + RETRY + b"\r\n"


def chunks(data: bytes) -> list[bytes]:
    """Decode a run of HTTP chunks into their payloads."""
    out = []
    while data:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        out.append(rest[:n])
        data = rest[n + 2:]
    return out


def test_event_framing_is_an_id_and_one_json_data_line():
    frame = encode_event(Presence("a\nb", 5, "x\r\ny"))
    assert frame.endswith(b"\n\n")
    assert frame.count(b"\n") == 3 and b"\r" not in frame
    id_line, data_line = frame.split(b"\n")[:2]
    assert id_line == b"id: " + event_id(Presence("a\nb", 5, "x\r\ny")).encode()
    assert data_line.startswith(b"data: ")
    assert json.loads(data_line[6:]) == {"time": 5, "status": "x\r\ny", "userid": "a\nb", "online": True}


def test_stream_headers_are_sent_at_once():
    server = MemoryServer()
    _, head = subscribe(server)
    assert b"Content-Type: text/event-stream\r\n" in head
    assert b"Cache-Control: no-cache\r\n" in head
    assert b"X-Accel-Buffering: no\r\n" in head


def test_stored_ping_first_then_live_pings_in_order():
    server = MemoryServer()
    assert server.ping_raw("alice", '{"status": "1"}') == (200, b"")
    conn, head = subscribe(server)
    assert head.endswith(STREAM_START + b"%x\r\n" % len(encode_event(Presence("alice", 1_800_000_000, "1")))
                         + encode_event(Presence("alice", 1_800_000_000, "1")) + b"\r\n")
    server.clock.advance(3)
    for status in ("2", "3", "0"):
        server.ping_raw("alice", status)
    assert chunks(conn.take()) == [
        encode_event(Presence("alice", 1_800_000_003, s)) for s in ("2", "3", "0")
    ]


def test_no_stored_ping_means_no_first_event():
    server = MemoryServer()
    conn, head = subscribe(server)
    assert head.endswith(STREAM_START)
    server.ping_raw("bob", "1")
    assert conn.take() == b""


def test_client_route_is_that_device_s_stream():
    server = MemoryServer()
    server.send("POST", "/ping", b"2", {"X-User-Claim": claim("alice", "phone")}).take()
    server.ping_raw("alice", "3")  # another device: the user's latest, not the phone's
    conn, head = subscribe(server, "/subscribe/alice/client/phone?token=abc")
    assert b'"status":"2","userid":"alice","online":true,"clientid":"phone"' in head
    assert b'"status":"3"' not in head


def test_keepalive_comment_every_interval():
    server = MemoryServer(KEEPALIVE="10")
    conn, _ = subscribe(server)
    conn.take()
    server.clock.advance(9.9)
    assert conn.take() == b""
    server.clock.advance(0.1)
    assert chunks(conn.take()) == [b":\n"]
    server.clock.advance(10)
    assert chunks(conn.take()) == [b":\n"]


def test_keepalives_follow_each_streams_own_start():
    # Not one tick for every stream: a turn writing a comment to each of 10,000
    # streams at once holds up every ping behind it.
    server = MemoryServer(KEEPALIVE="10")
    early, _ = subscribe(server)
    server.clock.advance(5)
    late, _ = subscribe(server)
    early.take(), late.take()
    server.clock.advance(5)
    assert (chunks(early.take()), late.take()) == ([b":\n"], b"")
    server.clock.advance(5)
    assert (early.take(), chunks(late.take())) == (b"", [b":\n"])


def test_disconnect_removes_the_stream_at_once():
    server = MemoryServer()
    first, _ = subscribe(server)
    second, _ = subscribe(server)
    assert len(server.hub.streams) == 2 and server.hub.users == 1
    first.close()
    assert len(server.hub.streams) == 1 and server.hub.users == 1
    second.close()
    assert len(server.hub.streams) == 0 and server.hub.users == 0
    assert server.store._subscribed == set()


def test_close_all_ends_streams_cleanly():
    server = MemoryServer()
    conn, _ = subscribe(server)
    server.hub.close_all()
    assert conn.take().endswith(b"0\r\n\r\n")
    assert not server.hub.streams


def test_rejected_ping_stores_nothing():
    server = MemoryServer()
    server.ping_raw("alice", "1")
    assert server.ping_raw("alice", "x" * 65)[0] == 400
    assert server.ping_raw("alice", b"", "application/json")[0] == 400
    assert stored_pings(server.store)["alice"].status == "1"


def test_oversized_declared_body_is_refused_before_it_is_read():
    server = MemoryServer()
    conn = server.connect()
    conn.send(b"POST /ping HTTP/1.1\r\nHost: x\r\nX-User-Claim: {\"userid\":\"a\"}\r\n"
              b"Content-Length: 4097\r\n\r\n")
    status, body = response(conn.take())
    assert status == 413 and json.loads(body)["error"]
    assert conn.transport.write_closed  # half-closed: it drains, then closes
    conn.send(b"x" * 4097)  # the rest of the body is read and dropped
    assert conn.take() == b""


def test_oversized_chunked_body_is_413():
    server = MemoryServer()
    conn = server.connect()
    conn.send(b"POST /ping HTTP/1.1\r\nHost: x\r\nX-User-Claim: {\"userid\":\"a\"}\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        conn.send(b"800\r\n" + b"a" * 0x800 + b"\r\n")
    conn.send(b"0\r\n\r\n")
    status, body = response(conn.take())
    assert status == 413 and "4096" in json.loads(body)["error"]
    assert "a" not in stored_pings(server.store)


def test_body_of_exactly_the_limit_is_read():
    server = MemoryServer()
    body = b'{"status":"1"}'
    body = body[:1] + b" " * (4096 - len(body)) + body[1:]
    assert len(body) == 4096
    assert server.ping_raw("alice", body) == (200, b"")


def test_unknown_path_and_wrong_method_are_json():
    server = MemoryServer()
    status, body = response(server.send("GET", "/nope").take())
    assert status == 404 and json.loads(body) == {"error": "no such path"}
    status, body = response(server.send("DELETE", "/subscribe/alice").take())
    assert status == 405 and "error" in json.loads(body)
    status, body = response(server.send("GET", "/ping").take())
    assert status == 405


def test_service_stop_ends_streams():
    server = MemoryServer()
    server.service.startService()
    conn, _ = subscribe(server)
    d = server.service.stopService()
    assert conn.take().endswith(b"0\r\n\r\n")
    # Hung up after the last chunk; the stop is done once the connection is.
    assert conn.transport.disconnecting and not d.called
    conn.close()
    assert d.called


def test_ping_fast_path_answers_like_the_router():
    """POST /ping skips Klein; its answers and errors must not change."""
    server = MemoryServer()
    assert server.ping_raw("alice", "1") == (200, b"")
    status, body = server.ping_raw("alice", "x" * 65)
    assert status == 400 and json.loads(body)["error"]
    status, body = response(server.send("POST", "/ping", b"1").take())
    assert status == 400 and "X-User-Claim" in json.loads(body)["error"]
    # Anything else still goes through Klein's routing.
    assert response(server.send("POST", "/ping/extra", b"1").take())[0] == 404
    assert response(server.send("PUT", "/ping", b"1").take())[0] == 405


def test_a_ping_whose_client_left_is_still_stored_without_errors():
    """The store's answer may come after the client is gone: nothing is cancelled."""
    from twisted.internet.defer import Deferred
    from twisted.logger import globalLogPublisher

    server = MemoryServer()
    stored = server.store.ping
    answer: Deferred = Deferred()
    server.store.ping = lambda ping: answer.addCallback(lambda _: stored(ping))
    failures = []
    globalLogPublisher.addObserver(failures.append)
    try:
        conn = server.send("POST", "/ping", b"1", {"X-User-Claim": '{"userid": "alice"}'})
        conn.close()
        answer.callback(None)
    finally:
        globalLogPublisher.removeObserver(failures.append)
    assert stored_pings(server.store)["alice"].status == "1"
    assert not [e for e in failures if "log_failure" in e]


def test_head_of_a_stream_is_its_headers_and_no_stream():
    server = MemoryServer()
    server.ping_raw("alice", "1")
    for path in ("/subscribe/alice", "/subscribe?user=alice"):
        conn = server.send("HEAD", path)
        head = conn.take()
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Type: text/event-stream\r\n" in head
        assert head.endswith(b"\r\n\r\n")  # no body, not even retry:
    assert not server.hub.streams


def test_a_bug_is_a_json_500_on_every_route(monkeypatch):
    from twisted.logger import globalLogPublisher

    server = MemoryServer()

    def broken(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.store, "get", broken)
    monkeypatch.setattr(server.store, "ping", broken)
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        for method, path in (("GET", "/status?user=alice"), ("POST", "/ping")):
            conn = server.send(method, path, b"1", {"X-User-Claim": '{"userid": "alice"}'})
            status, body = response(conn.take())
            assert (status, json.loads(body)) == (500, {"error": "internal error"})
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert len([e for e in logged if "log_failure" in e]) == 2
