"""Hostile input, generated: any request gets a 2xx or 4xx, never a 5xx or a
dropped connection; no frame broken by a smuggled line break; no one sees
another user's data.

Every example runs against the real site (channel, Klein routes, hub,
in-process store) over in-memory transports, so thousands run in seconds.
"""

from __future__ import annotations

import json
from urllib.parse import quote, quote_from_bytes

import jwt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heartbeat.core.identity import MAX_WATCH
from tests.helpers.claims import claim
from tests.helpers.in_memory import Connection, Response, Wire, request_bytes, stored_pings

SECRET = "a hostile-input test secret that is long enough for every HMAC hash"
VICTIM = "victim"
EXAMPLES = settings(max_examples=1000, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Header values as a client can put them on the wire: any byte but CR and LF
# (those would end the header line; NUL is allowed here and must be refused).
header_values = st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
content_types = st.one_of(
    st.sampled_from([None, "application/json", "application/x-www-form-urlencoded",
                     "text/plain", "application/json; charset=utf-8", "multipart/form-data"]),
    header_values,
)
# User ids as JSON can carry them: any code point, line breaks and lone
# surrogates included.
userids = st.text(min_size=1, max_size=40) | st.sampled_from(
    ["\r\n", "a\nb", "a\r\ndata: {}", "\x00", "\u2028", "\ud800", "..", "%2F", "a/b", VICTIM + "\n"])
json_values = st.none() | st.booleans() | st.integers() | st.text(max_size=10)
claims = st.builds(
    lambda userid, extra, ascii_only: json.dumps({"userid": userid, **extra}, ensure_ascii=ascii_only)
    .encode("utf-8", "surrogatepass"),
    st.one_of(userids, json_values),
    st.dictionaries(st.sampled_from(["clientid", "userid ", "x"]), json_values, max_size=2),
    st.booleans(),
)
statuses = st.text(max_size=70) | st.sampled_from(["\r", "1\n\ndata: x", "\x85", "0\r\n"])


def assert_answered(response: Response | None) -> Response:
    """A complete 2xx or 4xx answer; errors as JSON."""
    assert response is not None, "no answer"
    assert 200 <= response.status < 300 or 400 <= response.status < 500, response
    if response.status >= 400:
        assert response.complete
        assert response.headers[b"content-type"] == b"application/json", response
        assert isinstance(json.loads(response.body)["error"], str)
    return response


def assert_clean_frames(body: bytes) -> list[dict]:
    """Every frame is whole SSE fields; no CR anywhere; the events' data."""
    assert b"\r" not in body
    found = []
    for frame in body.split(b"\n\n")[:-1]:
        for line in frame.split(b"\n"):
            field = line.split(b":", 1)[0]
            assert field in (b"", b"id", b"data", b"retry"), frame
            if field == b"data":
                found.append(json.loads(line[6:]))
    return found


def watch(wire: Wire, path: str) -> Connection:
    conn = wire.connect()
    conn.send(request_bytes("GET", path))
    return conn


def events_of(conn: Connection) -> list[dict]:
    response = assert_answered(conn.response())
    return assert_clean_frames(response.body) if response.status == 200 else []


@EXAMPLES
@given(body=st.binary(max_size=5000) | statuses.map(lambda s: s.encode("utf-8", "surrogatepass")),
       content_type=content_types)
def test_any_ping_body(body, content_type):
    wire = Wire()
    victim = watch(wire, f"/subscribe/{VICTIM}")
    alice = watch(wire, "/subscribe/alice")
    headers = {"Content-Type": content_type} if content_type is not None else {}
    response = assert_answered(wire.ping("alice", body, headers))
    assert response.status in (200, 400, 413)
    stored = stored_pings(wire.store).get("alice")
    assert (stored is not None) == (response.status == 200)
    assert events_of(victim) == []
    seen = events_of(alice)
    if stored is not None:
        assert [(e["userid"], e["status"]) for e in seen] == [("alice", stored.status)]


@EXAMPLES
@given(header=header_values | claims, body=statuses.map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_any_claim_header(header, body):
    wire = Wire()
    victim = watch(wire, f"/subscribe/{VICTIM}")
    conn = wire.connect()
    conn.send(request_bytes("POST", "/ping", {"X-User-Claim": header}, body))
    response = assert_answered(conn.response())
    if response.status == 200:
        (userid,) = stored_pings(wire.store)
        assert userid == json.loads(header)["userid"]
    else:
        assert stored_pings(wire.store) == {}
    if VICTIM not in stored_pings(wire.store):
        assert events_of(victim) == []


@EXAMPLES
@given(userid=userids, status=statuses, clientid=st.text(max_size=20))
def test_any_user_id_pinged_and_watched(userid, status, clientid):
    """Ping as anyone, watch them by path and by ?user=: only their own frames, clean."""
    wire = Wire()
    path_id = quote(userid.encode("utf-8", "surrogatepass"), safe="")
    by_path = watch(wire, f"/subscribe/{path_id}")
    by_query = watch(wire, f"/subscribe?user={path_id}&user={VICTIM}")
    victim = watch(wire, f"/subscribe/{VICTIM}")
    response = assert_answered(wire.ping(userid, status.encode("utf-8", "surrogatepass"),
                                         {"X-User-Claim": claim(userid, clientid), "Content-Type": "text/plain"}))
    for conn in (by_path, by_query):
        for event in events_of(conn):
            assert event["userid"] == userid
            assert event["status"] == stored_pings(wire.store)[userid].status
    if userid != VICTIM:
        assert events_of(victim) == []
    status_read = assert_answered(wire.request("GET", f"/status?user={path_id}"))
    if status_read.status == 200:
        assert set(json.loads(status_read.body)) == {userid}
        if response.status != 200:
            assert json.loads(status_read.body)[userid] is None


@EXAMPLES
@given(query=st.binary(max_size=200), route=st.sampled_from(
    ["/status", "/subscribe", "/subscribe/alice", "/subscribe/alice/client/c", "/ping", "/nope"]))
def test_any_query_string(query, route):
    wire = Wire()
    wire.store.ping(wire_ping("alice"))
    wire.store.ping(wire_ping(VICTIM))
    method = "POST" if route == "/ping" else "GET"
    path = route.encode() + b"?" + quote_from_bytes(query, safe="=&;%+").encode()
    conn = wire.connect()
    conn.send(request_bytes(method, path, {"X-User-Claim": '{"userid": "alice"}'}, b"1"))
    response = assert_answered(conn.response())
    if route == "/status" and response.status == 200:
        asked = {value.decode() for name, values in parse_query(path).items()
                 if name == b"user" for value in values}
        assert set(json.loads(response.body)) == asked


@EXAMPLES
@given(raw=st.binary(max_size=400) | st.builds(
    lambda line, rest: line + b"\r\n" + rest,
    st.sampled_from([b"GET /status?user=a HTTP/1.1", b"POST /ping HTTP/1.1",
                     b"GET /subscribe/a HTTP/1.0", b"GET / HTTP/9.9", b"G\x00T / HTTP/1.1"]),
    st.binary(max_size=300)))
def test_any_bytes_on_the_wire(raw):
    """Whatever arrives, the client gets an answer: at once, or 408 at the deadline."""
    wire = Wire()
    conn = wire.connect()
    conn.send(raw)
    wire.clock.advance(wire.settings.request_timeout)
    assert_answered(conn.response())


@EXAMPLES
@given(claims=st.dictionaries(st.sampled_from(["userid", "clientid", "exp", "nbf", "iat", "aud"]),
                              st.none() | st.booleans() | st.integers() | st.text(max_size=20)
                              | st.lists(st.integers(), max_size=2)),
       where=st.sampled_from(["header", "query"]))
def test_any_jwt_claims(claims, where):
    wire = Wire({"JWT_SECRET": SECRET})
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    headers = {"Authorization": f"Bearer {token}"} if where == "header" else {}
    path = "/ping" if where == "header" else f"/ping?token={token}"
    response = assert_answered(wire.request("POST", path, headers, b"1"))
    assert response.status in (200, 400, 401)
    if response.status == 200:
        assert list(stored_pings(wire.store)) == [claims["userid"]]
    else:
        assert stored_pings(wire.store) == {}


@EXAMPLES
@given(token=header_values)
def test_any_token_text(token):
    wire = Wire({"JWT_SECRET": SECRET})
    conn = wire.connect()
    conn.send(request_bytes("POST", "/ping", {"Authorization": b"Bearer " + token}, b"1"))
    assert assert_answered(conn.response()).status in (400, 401)
    assert stored_pings(wire.store) == {}


# ``watch`` claims as a broken or hostile issuer might sign them: any JSON,
# lists of anything, and lists just past the limit.
def _huge(n: int, member: str) -> list[str]:
    return [member] * n


watch_claims = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    st.lists(st.sampled_from(["bob", "carol", "alice", ""]) | st.text(max_size=5), max_size=8),
    st.lists(st.none() | st.integers() | st.booleans() | st.text(max_size=5)
             | st.lists(st.text(max_size=3), max_size=2), min_size=1, max_size=6),
    st.builds(_huge, st.integers(MAX_WATCH - 2, MAX_WATCH + 50), st.sampled_from(["bob", "x"])),
)


def _valid_watch(watch: object) -> bool:
    return (isinstance(watch, list) and len(watch) <= MAX_WATCH
            and all(isinstance(member, str) for member in watch))


@settings(EXAMPLES, max_examples=400)
@given(watch=watch_claims,
       asked=st.lists(st.sampled_from(["bob", "carol", "alice", "x"]), min_size=1, max_size=4),
       route=st.sampled_from(["/subscribe/{0}", "/subscribe/{0}/client/c", "/subscribe?{all}",
                              "/status?{all}", "/ping"]),
       where=st.sampled_from(["header", "query"]))
def test_any_watch_claim(watch, asked, route, where):
    """A bad ``watch`` is a 401 on every route, never a 5xx; a good one scopes reads."""
    wire = Wire({"JWT_SECRET": SECRET, "MAX_HEADER_BYTES": str(1 << 20)})
    token = jwt.encode({"userid": "alice", "watch": watch}, SECRET, algorithm="HS256")
    path = route.format(asked[0], all="&".join(f"user={u}" for u in asked))
    headers = {"Authorization": f"Bearer {token}"} if where == "header" else {}
    if where == "query":
        path += ("&" if "?" in path else "?") + f"token={token}"
    method, body = ("POST", b"0") if route == "/ping" else ("GET", b"")
    response = assert_answered(wire.request(method, path, headers, body))
    if not _valid_watch(watch):
        assert response.status == 401, response
    elif route == "/ping":
        assert response.status == 200
    else:
        named = asked if "{all}" in route else asked[:1]
        allowed = set(named) <= set(watch) | {"alice"}
        assert response.status == (200 if allowed else 403), response
    if response.status != 200:
        assert stored_pings(wire.store) == {} and wire.hub.streams == set()


HIDDEN = ("3", "hide me")


@settings(EXAMPLES, max_examples=300)
@given(steps=st.lists(st.tuples(st.sampled_from(["phone", "web", ""]),
                                st.sampled_from(["0", "1", *HIDDEN, " 3 "]) | statuses,
                                st.sampled_from([0, 1, 30, 61])), max_size=10))
def test_a_hidden_status_never_reaches_a_watcher(steps):
    """Whatever a user's devices send, and whenever: no stream and no ``/status``
    shows a hidden status, and the user's stream never says "offline" twice running."""
    wire = Wire({"HIDDEN_STATUSES": ",".join(HIDDEN)})
    paths = ["/subscribe/alice", "/subscribe?user=alice&user=bob",
             "/subscribe/alice/client/phone", "/subscribe/alice/client/web"]
    streams = [watch(wire, path) for path in paths]
    for device, status, advance in steps:
        assert_answered(wire.ping("alice", status.encode("utf-8", "surrogatepass"),
                                  {"X-User-Claim": claim("alice", device), "Content-Type": "text/plain"}))
        wire.clock.advance(advance)
    for conn in streams:
        assert not {e["status"] for e in events_of(conn)} & set(HIDDEN)
    user = [e["online"] for e in events_of(streams[0])]
    assert all(a or b for a, b in zip(user, user[1:])), user
    body = json.loads(assert_answered(wire.request("GET", "/status?user=alice")).body)["alice"]
    if body is not None:
        assert body["status"] not in HIDDEN
        assert not {d["status"] for d in body["devices"].values()} & set(HIDDEN)
        if user:
            assert body["online"] == user[-1]


def wire_ping(userid: str):
    from heartbeat.core.presence import Ping

    return Ping(userid, 1, "1")


def parse_query(path: bytes) -> dict[bytes, list[bytes]]:
    from urllib.parse import parse_qs

    return parse_qs(path.split(b"?", 1)[1], keep_blank_values=True)
