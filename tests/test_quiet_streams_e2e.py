"""Stream options against the real daemon (embedded store): only changes, snapshots,
batches, resume, and POST /subscribe."""

from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import quote

import pytest

from tests.helpers.backend_calls import AUTH, KEY
from tests.helpers.claims import claim
from tests.helpers.clients import SSEClient, get, post_ping
from tests.helpers.processes import Daemon
from tests.helpers.redis_checks import numsub
from tests.helpers.waiting import wait_for

USERS = [f"user-{i}" for i in range(256)]


class Pinger:
    """Pings over one keep-alive connection (a load of them, quickly)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def ping(self, userid: str, status: str, clientid: str = "web", path: str = "/ping") -> None:
        self.conn.request("POST", path, body=status.encode(), headers={
            "X-User-Claim": claim(userid, clientid), "Content-Type": "text/plain"})
        response = self.conn.getresponse()
        response.read()
        assert response.status == 200

    def close(self) -> None:
        self.conn.close()


def stream(daemon: Daemon, path: str, **kwargs) -> SSEClient:
    client = SSEClient(daemon.port, path, **kwargs)
    assert client.status == 200, client.status
    return client


def query(*userids: str) -> str:
    return "&".join(f"user={u}" for u in userids)


def test_changes_only_sends_one_event_per_visible_change(start_daemon):
    daemon = start_daemon(env={"PRESENCE_TIMEOUT": "2"})
    pinger = Pinger(daemon.port)
    user = stream(daemon, "/subscribe/alice?changes=only")
    device = stream(daemon, "/subscribe/alice/client/phone?changes=only")
    pinger.ping("alice", "0")
    first = user.event()
    assert first | {"time": 0} == {"userid": "alice", "online": True, "status": "0", "time": 0}
    assert abs(first["time"] - time.time()) < 5
    for _ in range(5):  # the same status again and again: nothing
        pinger.ping("alice", "0")
    user.no_event(0.5)
    pinger.ping("alice", "1")  # a status change: exactly one
    assert user.event()["status"] == "1"
    user.no_event(0.3)
    device.no_event(0.1)
    pinger.ping("alice", "1", clientid="phone")  # a device appears: one, on its stream only
    assert device.event() | {"time": 0} == {"userid": "alice", "clientid": "phone",
                                            "online": True, "status": "1", "time": 0}
    user.no_event(0.3)
    for clientid in ("web", "phone"):  # offline: one each
        pinger.ping("alice", "", clientid=clientid, path="/leave")
    assert device.event()["online"] is False
    assert user.event()["online"] is False
    user.no_event(0.3)
    device.no_event(0.1)
    pinger.ping("alice", "1")  # back, then timed out: one each
    assert user.event()["online"] is True
    assert user.event(timeout=6)["online"] is False
    user.no_event(0.5)
    pinger.close()


def test_snapshot_of_256_users_is_one_event(daemon):
    pinger = Pinger(daemon.port)
    seen = USERS[::4]
    for userid in seen:
        pinger.ping(userid, "2")
    client = stream(daemon, "/subscribe?" + query(*USERS) + "&snapshot=1&changes=only")
    name, position, data = client.message()
    assert name == "snapshot"
    assert list(data["users"]) == USERS
    assert sum(state is not None for state in data["users"].values()) == len(seen)
    assert data["users"][seen[0]]["status"] == "2"
    assert data["users"][USERS[1]] is None
    client.no_event(0.3)
    status = json.loads(get(daemon.port, "/status?" + query(*USERS))[2])
    assert status == data["users"]
    pinger.close()


def test_batch_under_load_sends_at_most_one_batch_per_window_with_the_latest(daemon):
    users = USERS[:50]
    client = stream(daemon, "/subscribe?" + query(*users) + "&batch=2")
    batches: list[tuple[float, list[dict]]] = []

    def read() -> None:  # as they arrive, beside the load
        while True:
            try:
                name, _, data = client.message(timeout=4)
            except (TimeoutError, OSError):
                return
            assert name == "batch"
            batches.append((time.monotonic(), data["changes"]))

    reader = threading.Thread(target=read)
    reader.start()
    pinger = Pinger(daemon.port)
    last: dict[str, str] = {}
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < 6:  # about 100 pings a second, over 50 users
        userid, status = users[i % 50], str(i % 7)
        pinger.ping(userid, status)
        last[userid] = status
        i += 1
        time.sleep(max(0.0, start + i / 100 - time.monotonic()))
    pinger.close()
    reader.join()
    view: dict[str, str] = {}
    for _, changes in batches:
        userids = [change["userid"] for change in changes]
        assert len(userids) == len(set(userids))  # the latest of each, once
        view.update({change["userid"]: change["status"] for change in changes})
    assert view == last
    arrivals = [at for at, _ in batches]
    assert len(arrivals) >= 3
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert min(gaps) > 1.5, gaps  # sent by the server 2 s apart; read with some jitter


def redis_url(request: pytest.FixtureRequest, layout: str) -> str:
    """``REDIS`` of a redis-server of the test's own ("redis"), or of the module's Cluster."""
    if layout == "redis":
        return request.getfixturevalue("redis_server").address
    return request.getfixturevalue("cluster").url


@pytest.fixture(params=["embedded", "redis", "cluster"])
def pinged_and_watched(request, start_daemon) -> tuple[Daemon, Daemon]:
    """(the daemon pings go to, the one streams read): one embedded daemon, or two
    daemons on one redis-server or on a Redis Cluster, the change crossing the bus."""
    if request.param == "embedded":
        daemon = start_daemon(env={"API_KEY": KEY})
        return daemon, daemon
    env = {"REDIS": redis_url(request, request.param), "API_KEY": KEY}
    return start_daemon(env=env), start_daemon(env=env)


def test_reconnecting_after_10_of_256_changed_gets_exactly_those_10(pinged_and_watched):
    """A live event's id is a feed position: resuming from it gets exactly the
    changes missed since, whichever instance made them."""
    pinged, watched = pinged_and_watched
    pinger = Pinger(pinged.port)
    for userid in USERS:
        pinger.ping(userid, "0")
    path = "/subscribe?" + query(*USERS) + "&changes=only"
    first = stream(watched, path)
    opening = {first.message()[1] for _ in USERS}
    assert len(opening) == 1 and is_position(watched, opening.pop())
    pinger.ping(USERS[0], "0")  # no change: no event
    pinger.ping(USERS[0], "5")
    _, live, data = first.message()
    assert data["userid"] == USERS[0] and data["status"] == "5" and is_position(watched, live)
    first.no_event(0.3)
    first.close()
    changed = USERS[100:110]
    for userid in changed:
        pinger.ping(userid, "1")
    for userid in USERS[:50]:  # the same status again: no change
        pinger.ping(userid, "5" if userid == USERS[0] else "0")
    again = stream(pinged, path, headers={"Last-Event-ID": live})
    resumed = [again.message() for _ in changed]
    assert sorted(data["userid"] for _, _, data in resumed) == sorted(changed)
    assert {data["status"] for _, _, data in resumed} == {"1"}
    assert all(is_position(pinged, eid) for _, eid, _ in resumed)
    again.no_event(0.5)
    # A stale or foreign id: the full state.
    full = stream(watched, path, headers={"Last-Event-ID": "1800000000-abcdef012345"})
    assert len({full.message()[2]["userid"] for _ in USERS}) == 256
    pinger.close()


def is_position(daemon: Daemon, event_id: str) -> bool:
    """Whether ``event_id`` is a position of the daemon's change feed (the daemon
    needs ``API_KEY``): ``/changes`` reads on from it."""
    return get(daemon.port, f"/changes?limit=1&after={quote(event_id)}", headers=AUTH)[0] == 200


def test_post_subscribe_takes_1000_users(start_daemon):
    daemon = start_daemon(env={"MAX_USERS_PER_STREAM": "1000"})
    users = [f"member-{i}" for i in range(1000)]
    post_ping(daemon.port, "0", userid=users[-1])
    body = json.dumps({"users": users}).encode()
    client = stream(daemon, "/subscribe?snapshot=1", body=body)
    name, _, data = client.message()
    assert name == "snapshot" and list(data["users"]) == users
    assert data["users"][users[-1]]["online"] is True
    post_ping(daemon.port, "1", userid=users[0])
    assert client.message()[2]["userid"] == users[0]
    too_many = json.dumps({"users": [*users, "one-more"]}).encode()
    assert SSEClient(daemon.port, "/subscribe", body=too_many).status == 400
    assert SSEClient(daemon.port, "/subscribe", body=b'{"users": "a"}').status == 400
    big = b'{"users": ["' + b"x" * (1024 * 1024) + b'"]}'
    assert SSEClient(daemon.port, "/subscribe", body=big).status == 413


def test_any_other_option_value_is_400_on_every_route(daemon):
    for options in ("changes=maybe", "snapshot=2", "batch=0", "batch=61", "changes=only&batch=x"):
        for path in ("/subscribe/alice", "/subscribe/alice/client/web", "/subscribe?user=alice"):
            url = path + ("&" if "?" in path else "?") + options
            assert SSEClient(daemon.port, url).status == 400, url
            assert get(daemon.port, url)[0] == 400, url
        posted = SSEClient(daemon.port, "/subscribe?" + options, body=b'{"users": ["alice"]}')
        assert posted.status == 400, options


def test_changes_only_across_two_instances_on_redis(redis_server, start_daemon):
    """The same one-per-change events across the bus, each id a feed position."""
    args = ["--redis", redis_server.address, "--presence-timeout", "2", "--api-key", KEY]
    one, two = start_daemon(args), start_daemon(args)
    user = stream(two, "/subscribe?user=alice&user=bob&changes=only")
    device = stream(two, "/subscribe/alice/client/phone?changes=only&snapshot=1")
    assert device.message()[0] == "snapshot"
    wait_for(lambda: numsub(redis_server, "heartbeat:alice") == 1)
    pinger = Pinger(one.port)
    pinger.ping("alice", "0")
    assert user.event()["online"] is True
    for _ in range(5):
        pinger.ping("alice", "0")
    user.no_event(0.5)
    pinger.ping("alice", "1")
    _, position, data = user.message()
    assert data["status"] == "1" and is_position(two, position)
    pinger.ping("alice", "1", clientid="phone")
    _, position, data = device.message()
    assert data["online"] is True and is_position(two, position)
    user.no_event(0.3)
    pinger.ping("alice", "", clientid="phone", path="/leave")
    assert device.event()["online"] is False
    assert user.event(timeout=6)["online"] is False  # web timed out
    user.no_event(0.5)
    pinger.close()


@pytest.mark.parametrize("layout", ["redis", "cluster"])
def test_resume_across_two_instances_on_redis(request, start_daemon, layout):
    """The Redis feed gives the stream's first events a position: a client that comes
    back, to the other instance, gets only the users that changed since (users of
    their own: a Cluster serves the whole module)."""
    args = ["--redis", redis_url(request, layout)]
    one, two = start_daemon(args), start_daemon(args)
    users = [f"resumer-{i}" for i in range(40)]
    pinger = Pinger(one.port)
    for userid in users:
        pinger.ping(userid, "0")
    path = "/subscribe?" + query(*users) + "&changes=only&snapshot=1"
    first = stream(two, path)
    name, position, data = first.message()
    assert name == "snapshot" and len(data["users"]) == 40 and position
    first.close()
    changed = users[7:10]
    for userid in changed:
        pinger.ping(userid, "2")
    for userid in users:  # repeats: no change
        pinger.ping(userid, "2" if userid in changed else "0")
    again = stream(one, path, headers={"Last-Event-ID": position})
    name, _, data = again.message()
    assert name == "snapshot" and sorted(data["users"]) == sorted(changed)
    assert {state["status"] for state in data["users"].values()} == {"2"}
    again.no_event(0.5)
    pinger.close()
