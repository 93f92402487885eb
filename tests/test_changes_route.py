"""``GET /changes`` and ``/status``'s cursor through the Klein app (StubTreq, a fake clock).

The resync rule of SPEC §8 is checked as a property: under any interleaving
of pings, leaves and timeouts with reads, ``/status`` and its cursor plus
the changes read after it give every user's state exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock

from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.hub import Hub
from heartbeat.core.identity import Identity
from heartbeat.core.presence import Ping
from heartbeat.daemon.config import load_settings
from heartbeat.store.memory import MemoryStore
from heartbeat.store.sqlite import Database, SQLiteStore
from heartbeat.web.api import Api
from heartbeat.web.klein_app import HeartbeatApp
from tests.helpers.backend_calls import apply, from_status
from tests.helpers.sqlite_writer import Writer
from tests.helpers.stub_http import call, settled

KEY = "k-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def make_client(db: Path | None = None, **env: str) -> tuple[StubTreq, MemoryStore, Clock]:
    """The app over the memory store, or over the SQLite store of the file ``db``
    (its writes committed at the clock's next turn)."""
    env.setdefault("API_KEY", f"old-key,{KEY}")
    clock = Clock()
    clock.advance(1_800_000_000)
    settings = load_settings({}, environ=env, dotenv={})
    hiding = Hiding.of(settings.hidden_statuses)
    if db is None:
        store = MemoryStore(clock, 10, hiding, changes_retention=settings.changes_retention)
    else:
        store = SQLiteStore(Database.open(str(db)), clock, 10, hiding, writer=Writer(),
                            changes_retention=settings.changes_retention)
        store.startService()
    app = HeartbeatApp(Api(store, Hub(store, clock), clock,
                           Identity(None, settings.max_userid_length), settings, None, store))
    return StubTreq(app.resource()), store, clock


def changes(client: StubTreq, query: str = "", **headers: str) -> tuple[int, dict]:
    code, _, body = call(client, "GET", "/changes" + query, headers={**AUTH, **headers})
    return code, json.loads(body)


@pytest.mark.parametrize("headers, code, says", [
    ({}, 401, "API_KEY"),
    ({"Authorization": "Bearer wrong"}, 401, "API_KEY"),
    ({"Authorization": f"Basic {KEY}"}, 401, "API_KEY"),
    ({"X-User-Claim": '{"userid": "alice"}'}, 401, "API_KEY"),
    ({"Authorization": "Bearer old-key"}, 200, None),
])
def test_changes_needs_one_of_the_api_keys(headers, code, says):
    client, _, _ = make_client()
    answer, _, body = call(client, "GET", "/changes", headers=headers)
    assert answer == code
    if says:
        assert says in json.loads(body)["error"]


def test_without_api_key_backend_routes_are_403_naming_it():
    client, _, _ = make_client(API_KEY="")
    code, _, body = call(client, "GET", "/changes", headers=AUTH)
    assert code == 403 and "API_KEY" in json.loads(body)["error"]


@pytest.mark.parametrize("query", [
    "?limit=0", "?limit=1001", "?limit=x", "?limit=-1", "?wait=31", "?wait=-1", "?wait=soon",
    "?after=not%20a%20position",
])
def test_bad_limit_wait_or_after_is_400(query):
    client, _, _ = make_client()
    code, body = changes(client, query)
    assert code == 400 and body["error"]


def test_changes_pages_from_the_oldest_and_resumes_from_next():
    client, store, clock = make_client()
    store.ping(Ping("alice", 1, "0", "web"))
    store.ping(Ping("alice", 2, "1", "web"))
    code, page = changes(client, "?limit=2")
    assert code == 200
    assert page["changes"] == [
        {"id": page["changes"][0]["id"], "type": "online", "userid": "alice", "time": 1,
         "status": "0", "online": True, "at": 1_800_000_000_000},
        {"id": page["changes"][1]["id"], "type": "device_online", "userid": "alice",
         "clientid": "web", "time": 1, "status": "0", "online": True, "at": 1_800_000_000_000},
    ]
    code, rest = changes(client, f"?after={page['next']}")
    assert [c["type"] for c in rest["changes"]] == ["status"]
    code, empty = changes(client, f"?after={rest['next']}")
    assert empty == {"changes": [], "next": rest["next"]}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_after_a_changes_id_is_after_its_position(kind, tmp_path):
    client, store, clock = make_client(tmp_path / "heartbeat.db" if kind == "sqlite" else None)
    store.ping(Ping("alice", 1, "0", "web"))
    store.ping(Ping("bob", 1, "0", "web"))
    clock.advance(0)
    _, first = changes(client, "?limit=1")
    [change] = first["changes"]
    assert change["id"] != first["next"]
    by_id = changes(client, f"?after={change['id']}")
    assert by_id == changes(client, f"?after={first['next']}")
    assert by_id[0] == 200
    assert [(c["type"], c["userid"]) for c in by_id[1]["changes"]] == [
        ("device_online", "alice"), ("online", "bob"), ("device_online", "bob")]


def test_a_stale_position_is_410():
    client, store, clock = make_client(CHANGES_RETENTION="1m")
    code, first = changes(client)
    store.ping(Ping("alice", 1, "0"))
    clock.advance(120)
    store.ping(Ping("bob", 1, "0"))
    code, body = changes(client, f"?after={first['next']}")
    assert code == 410 and "Heartbeat-Cursor" in body["error"]


def test_wait_answers_when_a_change_comes_or_when_it_is_up():
    client, store, clock = make_client()
    _, first = changes(client)
    pending = client.get("http://heartbeat/changes?wait=30&after=" + first["next"], headers=AUTH)
    answered: list = []
    pending.addCallback(lambda r: answered.append(r) or r)
    client.flush()
    assert not answered
    clock.advance(5)
    store.ping(Ping("alice", 1, "0"))
    client.flush()
    response = settled(client, pending)
    body = json.loads(settled(client, response.content()))
    assert [c["type"] for c in body["changes"]] == ["online", "device_online"]
    # Nothing comes: an empty page once the wait is up.
    pending = client.get("http://heartbeat/changes?wait=2&after=" + body["next"], headers=AUTH)
    answered.clear()
    pending.addCallback(lambda r: answered.append(r) or r)
    client.flush()
    clock.advance(1.9)
    client.flush()
    assert not answered
    clock.advance(0.2)
    response = settled(client, pending)
    assert json.loads(settled(client, response.content())) == {
        "changes": [], "next": body["next"]}


def test_status_carries_the_cursor_it_includes():
    client, store, _ = make_client()
    store.ping(Ping("alice", 1, "0"))
    code, headers, body = call(client, "GET", "/status?user=alice")
    _, page = changes(client)
    assert headers["heartbeat-cursor"] == page["next"]


USERS = ["a", "b"]
DEVICES = ["x", "y"]
step = st.one_of(
    st.tuples(st.just("ping"), st.sampled_from(USERS), st.sampled_from(DEVICES),
              st.sampled_from(["0", "1", "3"])),
    st.tuples(st.just("leave"), st.sampled_from(USERS), st.sampled_from(DEVICES)),
    st.tuples(st.just("wait"), st.floats(0, 12)),
    st.tuples(st.just("resync"),),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(step, max_size=40))
def test_status_and_its_cursor_then_changes_reconstruct_every_user(steps):
    client, store, clock = make_client(HIDDEN_STATUSES="3")
    query = "/status?" + "&".join(f"user={u}" for u in USERS)
    _, headers, body = call(client, "GET", query)
    known, cursor = from_status(json.loads(body)), headers["heartbeat-cursor"]
    for s in steps:
        if s[0] == "ping":
            store.ping(Ping(s[1], int(clock.seconds()), s[3], s[2]))
        elif s[0] == "leave":
            store.leave(s[1], s[2])
        elif s[0] == "wait":
            clock.advance(s[1])
        else:  # a backend that restarts: resync from /status, then read on
            _, headers, body = call(client, "GET", query)
            known, cursor = from_status(json.loads(body)), headers["heartbeat-cursor"]
        _, page = changes(client, f"?after={cursor}&limit=1000")
        for change in page["changes"]:
            apply(known, change)
        cursor = page["next"]
        _, _, body = call(client, "GET", query)
        assert known == from_status(json.loads(body))


def test_a_store_without_a_feed_answers_503_after_the_key_check():
    settings = load_settings({}, environ={"API_KEY": KEY}, dotenv={})
    clock = Clock()
    store = MemoryStore(clock, 10)
    app = HeartbeatApp(Api(store, Hub(store, clock), clock,
                           Identity(None, settings.max_userid_length), settings, None, None))
    client = StubTreq(app.resource())
    assert call(client, "GET", "/changes")[0] == 401
    code, headers, body = call(client, "GET", "/changes", headers=AUTH)
    assert code == 503 and "no change feed" in json.loads(body)["error"] and headers["retry-after"]
    code, headers, _ = call(client, "GET", "/status?user=a")
    assert code == 200 and "heartbeat-cursor" not in headers
