"""Built-in JWT auth (SPEC §1): every way a token can be wrong is a 401."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from tests.helpers.claims import claim
from tests.helpers.in_memory import Wire, events, request_bytes, stored_pings

SECRET = "correct horse battery staple, long enough for HS256, HS384 and HS512 too"


@pytest.fixture
def wire() -> Wire:
    return Wire({"JWT_SECRET": SECRET})


def token(claims: dict | None = None, secret: str = SECRET, algorithm: str = "HS256") -> str:
    claims = {"userid": "alice", "clientid": "c1"} if claims is None else claims
    return jwt.encode(claims, secret, algorithm=algorithm)


def unsigned(claims: dict) -> str:
    """An ``alg: none`` token, as an attacker would forge one."""
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def ping(wire: Wire, headers: dict, path: str = "/ping"):
    return wire.request("POST", path, headers, b"1")


def stored(wire: Wire, userid: str):
    return stored_pings(wire.store).get(userid)


def test_bearer_header_identifies_the_pinger(wire):
    response = ping(wire, {"Authorization": f"Bearer {token()}"})
    assert response.status == 200
    assert stored(wire, "alice").status == "1"


def test_token_query_parameter_identifies_the_pinger(wire):
    assert ping(wire, {}, f"/ping?token={token()}").status == 200
    assert stored(wire, "alice") is not None


def test_good_header_wins_over_bad_query(wire):
    assert ping(wire, {"Authorization": f"Bearer {token()}"}, "/ping?token=junk").status == 200


def test_claim_header_is_ignored(wire):
    response = ping(wire, {"Authorization": f"Bearer {token()}", "X-User-Claim": claim("mallory")})
    assert response.status == 200
    assert stored(wire, "alice") is not None and stored(wire, "mallory") is None
    assert ping(wire, {"X-User-Claim": claim("mallory")}).status == 401


def test_unexpired_token_is_accepted(wire):
    fresh = token({"userid": "alice", "exp": int(time.time()) + 60})
    assert ping(wire, {"Authorization": f"Bearer {fresh}"}).status == 200


now = int(time.time())
BAD_TOKENS = {
    "no token": {},
    "empty query token": {"path": "/ping?token="},
    "bad signature": {"Authorization": f"Bearer {token(secret='another secret, also long enough for every HMAC algorithm to use')}"},
    "alg none": {"Authorization": f"Bearer {unsigned({'userid': 'alice'})}"},
    "alg none in query": {"path": f"/ping?token={unsigned({'userid': 'alice'})}"},
    "HS512": {"Authorization": f"Bearer {token(algorithm='HS512')}"},
    "HS384": {"Authorization": f"Bearer {token(algorithm='HS384')}"},
    "expired": {"Authorization": f"Bearer {token({'userid': 'alice', 'exp': now - 10})}"},
    "malformed": {"Authorization": "Bearer not.a.jwt"},
    "garbage": {"Authorization": "Bearer \xff\xfe"},
    "no userid": {"Authorization": f"Bearer {token({'clientid': 'c1'})}"},
    "numeric userid": {"Authorization": f"Bearer {token({'userid': 42})}"},
    "empty userid": {"Authorization": f"Bearer {token({'userid': ''})}"},
    "claims not an object": {"Authorization": "Bearer " + jwt.api_jws.encode(b"[1]", SECRET)},
    "not bearer": {"Authorization": f"Basic {token()}"},
    "bearer without token": {"Authorization": "Bearer "},
    # The header wins even when it is bad: no falling back to the query.
    "bad header, good query": {"Authorization": "Bearer nope", "path": f"/ping?token={token()}"},
    "basic header, good query": {"Authorization": "Basic dTpw", "path": f"/ping?token={token()}"},
}


@pytest.mark.parametrize("case", BAD_TOKENS, ids=list(BAD_TOKENS))
def test_every_bad_token_is_401_json_and_stores_nothing(wire, case):
    headers = dict(BAD_TOKENS[case])
    path = headers.pop("path", "/ping")
    response = ping(wire, headers, path)
    assert response.status == 401, response
    assert response.headers[b"content-type"] == b"application/json"
    assert response.headers[b"www-authenticate"].startswith(b"Bearer")
    assert response.json()["error"]
    assert stored_pings(wire.store) == {}


def test_expired_token_says_so(wire):
    expired = token({"userid": "alice", "exp": now - 10})
    assert "expired" in ping(wire, {"Authorization": f"Bearer {expired}"}).json()["error"]


def test_overlong_userid_in_token_is_400(wire):
    long_token = token({"userid": "a" * (wire.settings.max_userid_length + 1)})
    assert ping(wire, {"Authorization": f"Bearer {long_token}"}).status == 400


def test_subscribe_needs_a_valid_token(wire):
    assert wire.request("GET", "/subscribe/bob").status == 401
    assert wire.request("GET", "/subscribe/bob/client/c1", {"X-User-Claim": claim("bob")}).status == 401
    assert wire.request("GET", f"/subscribe/bob?token={unsigned({'userid': 'x'})}").status == 401
    assert wire.hub.streams == set()


@pytest.mark.parametrize("path", ["/subscribe?user=bob&user=carol", "/status?user=bob"])
def test_multi_user_routes_need_a_valid_token(wire, path):
    assert wire.request("GET", path).status == 401
    assert wire.request("GET", path, {"X-User-Claim": claim("bob")}).status == 401
    assert wire.request("GET", path, {"Authorization": f"Bearer {token()}"}).status == 200


def test_health_needs_no_token(wire):
    assert wire.request("GET", "/health").status != 401


def test_any_valid_token_may_watch_any_user(wire):
    """Watching contacts is the point: alice's token opens bob's stream."""
    ping(wire, {"Authorization": f"Bearer {token({'userid': 'bob'})}"})
    conn = wire.connect()
    conn.send(request_bytes("GET", f"/subscribe/bob?token={token()}"))
    response = conn.response()
    assert response.status == 200
    assert [e["userid"] for e in events(response)] == ["bob"]


def test_proxy_mode_needs_no_token_to_subscribe():
    wire = Wire()
    assert wire.request("GET", "/subscribe/bob?token=anything").status == 200
