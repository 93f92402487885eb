"""Who may watch whom (SPEC §1): a token's ``watch`` claim scopes every reading route."""

from __future__ import annotations

import time

import jwt
import pytest

from heartbeat.core.errors import BadCredentials
from heartbeat.core.identity import MAX_WATCH, token_claims
from tests.helpers.claims import claim_header
from tests.helpers.in_memory import Wire, request_bytes, stored_pings

SECRET = "a watch-claim test secret that is long enough for HS256 and more"


@pytest.fixture
def wire() -> Wire:
    return Wire({"JWT_SECRET": SECRET})


def token(userid: str = "alice", **claims: object) -> str:
    return jwt.encode({"userid": userid, "clientid": "c1", **claims}, SECRET, algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# Every route that reads presence, with the users it names.
READING = {
    "single": lambda users: f"/subscribe/{users[0]}",
    "device": lambda users: f"/subscribe/{users[0]}/client/phone",
    "multi": lambda users: "/subscribe?" + "&".join(f"user={u}" for u in users),
    "status": lambda users: "/status?" + "&".join(f"user={u}" for u in users),
}
ROUTES = pytest.mark.parametrize("route", READING, ids=list(READING))


def read(wire: Wire, route: str, users: list[str], headers: dict[str, str]):
    """GET ``route`` for ``users`` on a new connection to the edge."""
    conn = wire.connect()
    conn.send(request_bytes("GET", READING[route](users), headers))
    response = conn.response()
    assert response is not None
    return response


@ROUTES
def test_watch_allows_those_listed_and_self(wire, route):
    headers = bearer(token(watch=["bob", "carol"]))
    for users in (["bob"], ["carol"], ["alice"]):
        assert read(wire, route, users, headers).status == 200, users
    if route in ("multi", "status"):
        assert read(wire, route, ["bob", "alice", "carol"], headers).status == 200


@ROUTES
def test_anyone_else_is_403_for_the_whole_request_saying_how_many_not_who(wire, route):
    headers = bearer(token(watch=["bob"]))
    users = ["mallory"] if route in ("single", "device") else ["bob", "mallory", "eve", "alice"]
    response = read(wire, route, users, headers)
    assert response.status == 403, response
    assert response.headers[b"content-type"] == b"application/json"
    error = response.json()["error"]
    refused = 1 if route in ("single", "device") else 2
    assert f"{refused} of the {len(users)}" in error
    assert "mallory" not in error and "eve" not in error
    assert wire.hub.streams == set()


@ROUTES
def test_an_empty_watch_list_reads_only_itself(wire, route):
    headers = bearer(token(watch=[]))
    assert read(wire, route, ["alice"], headers).status == 200
    assert read(wire, route, ["bob"], headers).status == 403


def test_a_token_without_watch_reads_anyone(wire):
    headers = bearer(token())
    assert wire.request("GET", "/subscribe?user=bob&user=carol", headers).status == 200
    assert wire.request("GET", "/status?user=zoe", headers).status == 200


def test_watch_is_checked_against_the_token_in_the_query_too(wire):
    assert wire.request("GET", f"/subscribe/bob?token={token(watch=['bob'])}").status == 200
    assert wire.request("GET", f"/subscribe/eve?token={token(watch=['bob'])}").status == 403


def test_head_of_a_refused_stream_is_403(wire):
    response = wire.request("HEAD", "/subscribe/eve", bearer(token(watch=["bob"])))
    assert response.status == 403


def test_watch_does_not_limit_pinging(wire):
    response = wire.request("POST", "/ping", bearer(token(watch=["bob"])), b"0")
    assert response.status == 200
    assert stored_pings(wire.store)["alice"].status == "0"


def test_a_request_at_the_user_limit_all_watched_is_allowed(wire):
    limit = wire.settings.max_users_per_stream
    users = [f"u{i}" for i in range(limit)]
    headers = bearer(token(watch=users))
    assert read(wire, "multi", users, headers).status == 200
    assert read(wire, "status", users, headers).status == 200
    response = read(wire, "status", users[:-1] + ["outsider"], headers)
    assert response.status == 403
    assert f"1 of the {limit}" in response.json()["error"]


@ROUTES
def test_a_watch_list_at_its_limit_is_accepted_one_more_is_401(route):
    wire = Wire({"JWT_SECRET": SECRET, "MAX_HEADER_BYTES": str(1 << 20)})
    at_limit = [str(i) for i in range(MAX_WATCH)]
    headers = bearer(token(watch=at_limit))
    last = str(MAX_WATCH - 1)
    several = route in ("multi", "status")
    assert read(wire, route, [last, "0", "alice"] if several else [last], headers).status == 200
    assert read(wire, route, [last, str(MAX_WATCH)] if several else [str(MAX_WATCH)],
                headers).status == 403
    over = bearer(token(watch=at_limit + ["one more"]))
    assert read(wire, route, ["0"], over).status == 401


BAD_WATCH = {
    "string": "bob",
    "null": None,
    "number": 3,
    "object": {"bob": True},
    "number member": ["bob", 3],
    "null member": [None],
    "list member": [["bob"]],
    "bool member": [True],
}


@pytest.mark.parametrize("case", BAD_WATCH, ids=list(BAD_WATCH))
@pytest.mark.parametrize("path", ["/subscribe/bob", "/subscribe/bob/client/c",
                                  "/subscribe?user=bob", "/status?user=bob", "/ping"])
def test_a_watch_that_is_not_a_list_of_strings_spoils_the_token(wire, case, path):
    headers = bearer(token(watch=BAD_WATCH[case]))
    method, body = ("POST", b"0") if path == "/ping" else ("GET", b"")
    response = wire.request(method, path, headers, body)
    assert response.status == 401, response
    assert response.headers[b"www-authenticate"].startswith(b"Bearer")
    assert "watch" in response.json()["error"]
    assert stored_pings(wire.store) == {} and wire.hub.streams == set()


def test_token_claims_reads_exp_and_watch():
    claims = token_claims({"userid": "alice", "exp": "1900000000", "watch": ["b", "b", "c"]})
    assert claims.exp == 1900000000.0
    assert claims.watch == frozenset({"b", "c"})
    assert token_claims({"userid": "alice"}).watch is None
    assert token_claims({"userid": "alice", "exp": 10 ** 40}).exp < 10 ** 12
    with pytest.raises(BadCredentials):
        token_claims({"userid": "alice", "watch": [str(i) for i in range(MAX_WATCH + 1)]})


def test_trusted_proxy_mode_reads_anyone():
    """The proxy, not heartbeat, scopes reads in that mode (README: Privacy)."""
    wire = Wire()
    assert wire.request("GET", "/subscribe/bob", claim_header("alice", None, watch=[])).status == 200


def test_an_expired_token_opens_nothing(wire):
    headers = bearer(token(watch=["bob"], exp=int(time.time()) - 5))
    assert wire.request("GET", "/subscribe/bob", headers).status == 401
