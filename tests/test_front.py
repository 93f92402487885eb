"""The front: the usual stream request opened at once, everything else as twisted.web would."""

from __future__ import annotations

import jwt
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from heartbeat.core.stream import Stream
from heartbeat.web.front import Deadlines, parse_head
from tests.wire import Connection, Response, Wire, claim, parse_response, request_bytes

SECRET = "a front secret of thirty-two bytes"
TOKEN = jwt.encode({"userid": "carol"}, SECRET, algorithm="HS256")
ORIGIN = "https://chat.example"


def front_opened(wire: Wire, monkeypatch) -> list[float]:
    """Record every connection a front hands to twisted.web."""
    handed: list[float] = []
    make = wire.site.http_channel
    monkeypatch.setattr(wire.site, "http_channel", lambda due: handed.append(due) or make(due))
    return handed


def test_a_stream_request_is_opened_by_the_front_as_twisted_web_would(monkeypatch):
    wire = Wire({"CORS_ORIGINS": ORIGIN})
    wire.clock.advance(1_800_000_000)
    handed = front_opened(wire, monkeypatch)
    raw = request_bytes("GET", "/subscribe/alice", {"Origin": ORIGIN})
    fast = wire.connect()
    fast.send(raw)
    assert handed == []
    assert isinstance(fast.transport.protocol, Stream)
    slow = wire.connect(http=True)
    slow.send(raw)
    assert fast.transport.value() == slow.transport.value().replace(
        slow.response().headers[b"date"], fast.response().headers[b"date"])
    assert fast.response().headers[b"date"] == b"Fri, 15 Jan 2027 08:00:00 GMT"
    assert wire.hub.users == 1 and len(wire.hub.streams) == 2


def test_a_request_trickling_in_is_opened_once_complete(monkeypatch):
    wire = Wire()
    handed = front_opened(wire, monkeypatch)
    conn = wire.connect()
    for byte in request_bytes("GET", "/subscribe/alice?user=x"):
        assert conn.transport.value() == b""
        conn.send(bytes([byte]))
    assert handed == [] and conn.response().status == 200
    assert wire.ping("alice", b"1").status == 200
    assert b'"status":"1"' in conn.take()


def test_any_other_first_request_goes_to_twisted_web_at_once(monkeypatch):
    wire = Wire()
    handed = front_opened(wire, monkeypatch)
    conn = wire.connect()
    conn.send(b"P")
    assert handed == [wire.settings.request_timeout]
    conn.send(request_bytes("POST", "/ping", {"X-User-Claim": claim("alice")}, b"1")[1:])
    assert conn.response().status == 200


def test_a_first_request_handed_over_keeps_the_time_it_had_left():
    wire = Wire({"REQUEST_TIMEOUT": "10"})
    conn = wire.connect()
    conn.send(b"GET /subscribe/alice HTTP/1.1\r\n")
    wire.clock.advance(4)
    conn.send(b"Content-Length: 0\r\n")  # no longer the front's kind of request
    wire.clock.advance(5.9)
    assert conn.transport.value() == b""
    wire.clock.advance(0.1)
    assert conn.response().status == 408


def test_connections_still_silent_are_closed_at_shutdown():
    wire = Wire()
    wire.service.startService()
    silent = wire.connect()
    partial = wire.connect()
    partial.send(b"GET /subscr")
    wire.service.stopService()
    assert silent.transport.disconnecting and partial.transport.disconnecting


def test_deadlines_need_one_timer_for_every_connection():
    clock = Clock()
    deadlines = Deadlines(clock, 10)
    late: list[str] = []

    class Waiting:
        def __init__(self, name: str) -> None:
            self.name = name

        def too_slow(self) -> None:
            late.append(self.name)

    for name in "abc":
        deadlines.add(Waiting(name))  # type: ignore[arg-type]
        clock.advance(1)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(6.5)
    assert late == []
    clock.advance(0.5)
    assert late == ["a"]
    clock.advance(2)
    assert late == ["a", "b", "c"] and clock.getDelayedCalls() == []
    deadlines.add(Waiting("d"))
    assert len(clock.getDelayedCalls()) == 1


def test_parse_head_takes_only_what_twisted_web_would_take_as_is():
    line = b"GET /subscribe/a HTTP/1.1"
    assert parse_head(line).headers == {}
    head = parse_head(line + b"\r\nHost: x\r\nLast-Event-ID:  7-ab ")
    assert head.headers == {b"host": b"x", b"last-event-id": b"7-ab"}
    assert head.getHeader(b"Last-Event-ID") == b"7-ab"
    assert parse_head(b"GET /subscribe?user=a&user=b&token= HTTP/1.1").args == {
        b"user": [b"a", b"b"], b"token": [b""]}
    for refused in [
        b"GET /subscribe/a HTTP/1.0",
        b"HEAD /subscribe/a HTTP/1.1",
        b"GET  /subscribe/a HTTP/1.1",
        b"GET /subscribe/a HTTP/1.1 x",
        line + b"\r\nX Odd: 1",
        line + b"\r\nX-A: 1\r\n folded",
        line + b"\r\nNo colon",
        line + b"\r\n: no name",
        line + b"\r\nContent-Length: 0",
        line + b"\r\nTransfer-Encoding: chunked",
        line + b"\r\nExpect: 100-continue",
        line + b"\r\nConnection: close",
        line + b"\r\nConnection: keep-alive, Upgrade",
        line + b"\r\nHost: x\r\nhost: y",
    ]:
        assert parse_head(refused) is None, refused


# Requests around the stream routes, the usual and the odd, for the property below.
_METHODS = st.sampled_from(["GET", "GET", "GET", "HEAD", "POST"])
_PATHS = st.sampled_from([
    "/subscribe/alice", "/subscribe/alice/client/web", "/subscribe?user=alice&user=bob",
    "/subscribe?user=", "/subscribe", "/subscribe/%61lice", "/subscribe//x",
    f"/subscribe/alice?token={TOKEN}", "/subscribe/alice?token=junk", "/subscribex",
    "/subscribe/" + "u" * 300, "/subscribe/al%FFice",
])
_HEADERS = st.lists(st.sampled_from([
    ("Origin", ORIGIN), ("Origin", "https://elsewhere.example"), ("Last-Event-ID", "1-abc"),
    ("Connection", "close"), ("Connection", "keep-alive"), ("Connection", "Keep-Alive"),
    ("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer junk"),
    ("Authorization", "Basic eA=="), ("X-Odd Name", "1"), ("Content-Length", "0"),
    ("Expect", "100-continue"), ("X-Long", "v" * 20000), ("X-Latin", "caf\xe9"),
]), max_size=4)
_ENVS = st.sampled_from([
    {}, {"CORS_ORIGINS": ORIGIN}, {"JWT_SECRET": SECRET}, {"MAX_STREAMS": "1"},
    {"MAX_USERS_PER_STREAM": "1", "CORS_ORIGINS": "*"},
])


def _request(method: str, path: str, version: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {path} {version}", "Host: localhost"]
    lines += [f"{name}: {value}" for name, value in headers]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"


def _answer(conn: Connection) -> tuple[Response | None, bool]:
    response = parse_response(conn.transport.value())
    if response is not None:
        response.headers.pop(b"date", None)
        response.rest = b""
    return response, conn.transport.disconnecting


@settings(max_examples=300, deadline=None)
@given(env=_ENVS, method=_METHODS, path=_PATHS,
       version=st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]), headers=_HEADERS)
def test_the_front_answers_every_request_as_twisted_web_does(env, method, path, version, headers):
    """Whatever the front opens itself or hands on, the client sees the same answer."""
    raw = _request(method, path, version, headers)
    answers = []
    for http in (False, True):
        wire = Wire(env)
        if "MAX_STREAMS" in env:  # the limit reached
            wire.connect().send(request_bytes("GET", "/subscribe/zed"))
        conn = wire.connect(http)
        conn.send(raw)
        answers.append(_answer(conn))
    assert answers[0] == answers[1]

