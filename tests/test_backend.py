"""The app's backend routes over the real edge and Klein app, in process: keys,
bulk status, who is online, erasure, disconnect, device retention."""

from __future__ import annotations

import json

import pytest

from heartbeat.core.errors import BadCredentials, NotAllowed
from heartbeat.web.feed_route import check_api_key
from tests.helpers.claims import claim
from tests.helpers.in_memory import Wire, events

KEY = "k-0123456789"
OLD_KEY = "k-old-9876543210"


class Asked:
    """Just the headers a key check reads."""

    def __init__(self, authorization: bytes | None) -> None:
        self.args: dict[bytes, list[bytes]] = {}
        self._authorization = authorization

    def getHeader(self, name: bytes) -> bytes | None:
        return self._authorization if name.lower() == b"authorization" else None


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def wire() -> Wire:
    return Wire({"API_KEY": f"{KEY}, {OLD_KEY}"})


BACKEND_ROUTES = [
    ("POST", "/status", b'{"users": ["a"]}'),
    ("GET", "/online", b""),
    ("GET", "/online?list=1", b""),
    ("DELETE", "/users/a", b""),
    ("POST", "/users/a/disconnect", b""),
]


def test_key_check():
    keys = ("one", "two")
    check_api_key(Asked(b"Bearer one"), keys)
    check_api_key(Asked(b"bearer  two "), keys)
    for wrong in (None, b"Bearer", b"Bearer three", b"Basic one", b"one", b"Bearer onetwo"):
        with pytest.raises(BadCredentials):
            check_api_key(Asked(wrong), keys)
    with pytest.raises(NotAllowed, match="API_KEY"):
        check_api_key(Asked(b"Bearer one"), ())


@pytest.mark.parametrize("method, path, body", BACKEND_ROUTES)
def test_each_backend_route_needs_a_key(wire, method, path, body):
    assert wire.request(method, path, {}, body).status == 401
    response = wire.request(method, path, bearer("nope"), body)
    assert response.status == 401
    assert "error" in response.json()
    assert response.headers[b"www-authenticate"].startswith(b"Bearer")
    for key in (KEY, OLD_KEY):  # either key of a rotation
        assert wire.request(method, path, bearer(key), body).status in (200, 204)


@pytest.mark.parametrize("method, path, body", BACKEND_ROUTES)
def test_backend_routes_are_off_without_api_key(method, path, body):
    response = Wire().request(method, path, bearer(KEY), body)
    assert response.status == 403
    assert "API_KEY" in response.json()["error"]


@pytest.mark.parametrize("method, path, body", BACKEND_ROUTES)
def test_user_credentials_never_open_a_backend_route(method, path, body):
    import jwt

    secret = "s" * 32
    wire = Wire({"API_KEY": KEY, "JWT_SECRET": secret})
    token = jwt.encode({"userid": "a", "clientid": "c"}, secret, algorithm="HS256")
    assert wire.request(method, path, bearer(token), body).status == 401
    assert wire.request(method, path, {"X-User-Claim": claim("a")}, body).status == 401
    assert wire.request(method, f"{path}{'&' if '?' in path else '?'}token={KEY}", {},
                        body).status == 401


def test_a_key_never_stands_in_for_a_user():
    wire = Wire({"API_KEY": KEY, "JWT_SECRET": "s" * 32})
    assert wire.request("POST", "/ping", bearer(KEY), b"0").status == 401
    assert wire.request("GET", "/status?user=a", bearer(KEY)).status == 401


def test_probes_need_no_credentials_in_jwt_mode():
    wire = Wire({"API_KEY": KEY, "JWT_SECRET": "s" * 32})
    assert wire.request("GET", "/livez").status == 200
    assert wire.request("GET", "/readyz").status == 200
    wire.edge.api.stopping = True
    assert wire.request("GET", "/readyz").status == 503
    assert wire.request("GET", "/livez").status == 200


def test_readyz_says_503_until_the_store_has_loaded_presence():
    wire = Wire({"API_KEY": KEY})
    store = wire.edge.api.store
    store.loaded = False  # the embedded store reading its online users after start
    response = wire.request("GET", "/readyz")
    assert response.status == 503 and response.json() == {"status": "loading"}
    assert wire.request("GET", "/livez").status == 200
    store.loaded = True
    assert wire.request("GET", "/readyz").status == 200


def test_bulk_status(wire):
    wire.ping("a")
    wire.ping("b")
    wire.request("POST", "/leave", {"X-User-Claim": claim("b")})
    users = ["a", "b", "never"]
    response = wire.request("POST", "/status", bearer(KEY), json.dumps({"users": users}).encode())
    body = response.json()
    assert list(body) == users
    assert body["a"]["online"] is True and body["b"]["online"] is False and body["never"] is None
    only = wire.request("POST", "/status?online=only", bearer(KEY),
                        json.dumps({"users": users}).encode()).json()
    assert list(only) == ["a"]


@pytest.mark.parametrize("body", [
    b"", b"[]", b'{"users": "a"}', b'{"users": [1]}', b'{"users": []}', b"{nope",
    json.dumps({"users": [f"u{i}" for i in range(10_001)]}).encode(),
])
def test_bulk_status_refuses_bad_bodies(wire, body):
    assert wire.request("POST", "/status", bearer(KEY), body).status == 400


def test_bulk_status_takes_ten_thousand_users_and_refuses_over_a_mebibyte(wire):
    users = [f"user-{i:05d}" for i in range(10_000)]
    response = wire.request("POST", "/status", bearer(KEY), json.dumps({"users": users}).encode())
    assert response.status == 200 and len(response.json()) == 10_000
    huge = json.dumps({"users": ["x" * 200] * 6000}).encode()
    assert len(huge) > 1 << 20
    assert wire.request("POST", "/status", bearer(KEY), huge).status == 413


def test_online_count_and_pages_name_each_user_once(wire):
    for i in range(25):
        wire.ping(f"u{i:02d}")
    wire.request("POST", "/leave", {"X-User-Claim": claim("u07")})
    assert wire.request("GET", "/online", bearer(KEY)).json() == {"count": 24}
    seen, after = [], None
    while True:
        path = "/online?list=1&limit=5" + (f"&after={after}" if after else "")
        page = wire.request("GET", path, bearer(KEY)).json()
        assert page["count"] == 24 and len(page["users"]) <= 5
        seen += page["users"]
        after = page["next"]
        if after is None:
            break
    assert sorted(seen) == sorted(f"u{i:02d}" for i in range(25) if i != 7)
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("query", [
    "list=1&limit=0", "list=1&limit=10001", "list=1&limit=x", "list=2", "list=1&after=%25%25",
])
def test_online_refuses_bad_queries(wire, query):
    assert wire.request("GET", f"/online?{query}", bearer(KEY)).status == 400


def test_erase_forgets_the_user_and_tells_watchers(wire):
    wire.ping("gone")
    wire.ping("stays")
    watcher = wire.connect()
    watcher.send(b"GET /subscribe?user=gone&user=stays HTTP/1.1\r\nHost: x\r\n\r\n")
    own = wire.connect()
    own.send(b"GET /subscribe/stays HTTP/1.1\r\nHost: x\r\nX-User-Claim: "
             + claim("gone").encode() + b"\r\n\r\n")
    assert wire.request("DELETE", "/users/gone", bearer(KEY)).status == 204
    assert events(watcher.response())[-1] == {"userid": "gone", "online": False, "erased": True}
    assert own.response().complete  # the erased user's own stream ended
    assert not watcher.response().complete
    status = wire.request("POST", "/status", bearer(KEY), b'{"users": ["gone", "stays"]}').json()
    assert status["gone"] is None and status["stays"] is not None
    assert wire.request("GET", "/online", bearer(KEY)).json() == {"count": 1}
    assert wire.request("DELETE", "/users/never-seen", bearer(KEY)).status == 204


def test_disconnect_ends_the_users_own_streams_and_leave_takes_devices_offline(wire):
    wire.ping("alice")
    own = wire.connect()
    own.send(b"GET /subscribe/bob HTTP/1.1\r\nHost: x\r\nX-User-Claim: "
             + claim("alice").encode() + b"\r\n\r\n")
    other = wire.connect()
    other.send(b"GET /subscribe/alice HTTP/1.1\r\nHost: x\r\nX-User-Claim: "
               + claim("carol").encode() + b"\r\n\r\n")
    assert wire.request("POST", "/users/alice/disconnect", bearer(KEY)).status == 204
    assert own.response().complete and not other.response().complete
    assert events(other.response())[-1]["online"] is True  # no leave: still online
    assert wire.request("POST", "/users/alice/disconnect?leave=1", bearer(KEY)).status == 204
    assert events(other.response())[-1]["online"] is False


def test_devices_older_than_retention_are_forgotten():
    wire = Wire({"API_KEY": KEY, "DEVICE_RETENTION": "2m", "PRESENCE_TIMEOUT": "10"})
    clock = wire.clock
    clock.advance(1_000_000)
    wire.ping("a", headers={"X-User-Claim": claim("a", "old")})
    wire.request("POST", "/leave", {"X-User-Claim": claim("a", "old")})
    clock.advance(100)
    wire.ping("a", headers={"X-User-Claim": claim("a", "new")})
    for _ in range(20):
        clock.advance(5)
        wire.ping("a", headers={"X-User-Claim": claim("a", "new")})
    state = wire.request("POST", "/status", bearer(KEY), b'{"users": ["a"]}').json()["a"]
    assert list(state["devices"]) == ["new"]
    # The user's own last ping stays when every device is forgotten.
    clock.advance(400)
    state = wire.request("POST", "/status", bearer(KEY), b'{"users": ["a"]}').json()["a"]
    assert state["devices"] == {} and state["status"] == "0"


def test_user_ids_with_a_slash_are_erased_and_disconnected(wire):
    wire.ping("team/alice")
    assert wire.request("POST", "/users/team%2Falice/disconnect", bearer(KEY)).status == 204
    assert wire.request("DELETE", "/users/team%2Falice", bearer(KEY)).status == 204
    status = wire.request("POST", "/status", bearer(KEY), b'{"users": ["team/alice"]}').json()
    assert status == {"team/alice": None}


def test_erase_leaves_one_erased_change_in_the_feed(wire):
    wire.ping("gone")
    wire.ping("stays")
    assert wire.request("DELETE", "/users/gone", bearer(KEY)).status == 204
    changes = wire.request("GET", "/changes", bearer(KEY)).json()["changes"]
    assert [c["type"] for c in changes if c["userid"] == "gone"] == ["erased"]
    assert [c for c in changes if c["userid"] == "gone"][0].keys() == {"id", "type", "userid", "at"}
    assert any(c["userid"] == "stays" for c in changes)
