"""The browser client library (clients/js) in headless Chromium against the real daemon.

Each test opens ``tests/browser/harness.html`` (the library and a JWT minter)
on its own origin, with the daemon in JWT mode on another (``CORS_ORIGINS``):
the map a page builds is compared with ``/status``, open streams are counted
on ``/metrics``, and presence is read back from the daemon.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.helpers.browsers import checkout_site, chromium
from tests.helpers.clients import get, post_ping
from tests.helpers.waiting import wait_for

SECRET = "client-e2e-secret-at-least-32-bytes!!"
ME = "me"


def token(userid: str, clientid: str = "c1", **claims: Any) -> str:
    return jwt.encode({"userid": userid, "clientid": clientid, **claims}, SECRET, algorithm="HS256")


def auth(userid: str = "observer") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(userid)}"}


def ping(port: int, userid: str, status: str) -> None:
    answer = post_ping(port, json.dumps({"status": status}), userid=None,
                       content_type="application/json", headers=auth(userid))
    assert answer[0] == 200, answer


def status(port: int, *users: str) -> dict[str, Any]:
    query = "&".join(f"user={u}" for u in users)
    code, _, body = get(port, f"/status?{query}", headers=auth())
    assert code == 200, body
    return {user: state and {k: state[k] for k in ("time", "status", "online")}
            for user, state in json.loads(body).items()}


def metric(port: int, name: str) -> int:
    code, _, body = get(port, "/metrics")
    assert code == 200
    match = re.search(rb"^" + name.encode() + rb"(?:_total)? (\d+)", body, re.M)
    assert match, body
    return int(match.group(1))


def open_streams(port: int) -> int:
    return metric(port, "heartbeat_open_streams")


def online(port: int, user: str = ME) -> bool:
    state = status(port, user)[user]
    return bool(state and state["online"])


@pytest.fixture
def origin() -> Iterator[str]:
    with checkout_site() as site:
        yield site


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as chrome:
        yield chrome


@pytest.fixture
def hb_daemon(start_daemon, origin):
    """A JWT daemon open to the pages' origin: ``hb_daemon(**settings)``."""
    def start(port: int | None = None, **settings: str):
        env = {"JWT_SECRET": SECRET, "CORS_ORIGINS": origin, **settings}
        return start_daemon(env=env, port=port)
    return start


def open_client(context: Any, origin: str, daemon: Any, **options: Any) -> Any:
    """A tab of ``context`` running the library as user ``me``, device ``c1``."""
    page = context.new_page()
    page.goto(f"{origin}/tests/browser/harness.html")
    page.wait_for_function("window.ready === true")
    page.evaluate("(o) => start(o)", {
        "server": daemon.url, "secret": SECRET, "userid": ME, "clientid": "c1",
        "backoff": {"base": 250, "max": 2000}, **options})
    return page


def leaders(pages: list[Any]) -> list[Any]:
    return [p for p in pages if p.evaluate("hb.isLeader")]


def test_the_map_matches_status_after_pings(hb_daemon, origin, browser):
    daemon = hb_daemon()
    ping(daemon.port, "alice", "0")
    page = open_client(browser.new_context(), origin, daemon, watch=["alice", "bob", "carol"])
    page.wait_for_function("hb.connection.state === 'live'")
    ping(daemon.port, "bob", "1")
    ping(daemon.port, "alice", "2")
    expected = status(daemon.port, "alice", "bob", "carol")
    assert expected["carol"] is None
    page.wait_for_function("(want) => JSON.stringify(presenceMap()) === want", arg=json.dumps(expected, separators=(",", ":")))
    assert page.evaluate("log").count(["alice", "2", True]) == 1
    # Watching one more user: one new stream, and nothing known is lost or repeated.
    ping(daemon.port, "dave", "0")
    page.evaluate("hb.watch(['dave'])")
    page.wait_for_function("hb.connection.opens === 2 && presenceMap().dave !== null")
    assert page.evaluate("presenceMap()") == status(daemon.port, "alice", "bob", "carol", "dave")
    assert [entry[0] for entry in page.evaluate("log")].count("alice") == 2  # "0", then "2"
    # The page is present itself: its pings, paced from the server.
    wait_for(lambda: online(daemon.port), timeout=5)
    assert page.evaluate("hb.connection.presence") in ("ping", "stream")


def test_a_long_list_is_watched_on_one_stream(hb_daemon, origin, browser):
    """Past 4,000 characters of URL: POST /subscribe, or GET where the server has no POST."""
    daemon = hb_daemon()
    users = [f"colleague-{n:03d}-" + "x" * 20 for n in range(200)]
    ping(daemon.port, users[7], "1")
    page = open_client(browser.new_context(), origin, daemon, watch=users)
    page.wait_for_function("(u) => presenceMap()[u] !== null", arg=users[7])
    ping(daemon.port, users[199], "2")
    page.wait_for_function("(u) => presenceMap()[u] !== null", arg=users[199])
    assert page.evaluate("presenceMap()") == status(daemon.port, *users)
    wait_for(lambda: open_streams(daemon.port) == 1, timeout=5)


def test_three_tabs_hold_one_stream_and_the_leader_hands_over_within_a_second(hb_daemon, origin, browser):
    daemon = hb_daemon()
    ping(daemon.port, "alice", "0")
    context = browser.new_context()
    pages = [open_client(context, origin, daemon, watch=["alice"]) for _ in range(3)]
    for page in pages:
        page.wait_for_function("JSON.stringify(presenceMap().alice) !== 'null'")
    wait_for(lambda: open_streams(daemon.port) == 1, timeout=5)
    time.sleep(1)  # and it stays one
    assert open_streams(daemon.port) == 1
    [leader] = leaders(pages)
    rest = [p for p in pages if p is not leader]

    closed_at = time.time()
    leader.close()
    ping(daemon.port, "alice", "1")  # while the lead changes hands
    for page in rest:
        page.wait_for_function("presenceMap().alice.status === '1'", timeout=5_000)
    [heir] = leaders(rest)
    live_at = heir.evaluate(
        "connections.find((c) => c.leader && c.state === 'live').at") / 1000
    assert live_at - closed_at < 1.0, f"handed over in {live_at - closed_at:.2f} s"
    assert open_streams(daemon.port) == 1
    for page in rest:
        assert page.evaluate("log") == [["alice", "0", True], ["alice", "1", True]]


# Short, so the test is quick; long enough that a loaded CI machine (the suite runs in
# parallel) renews the device in time: a renewal may be a third of it late.
HIDDEN_TIMEOUT = 5


def test_a_hidden_tab_stays_online_past_presence_timeout(hb_daemon, origin, browser):
    """Hidden, with its timers throttled to once a minute, as Chrome does to background tabs.

    A presence stream holds the device with no pings at all; against a server
    without them the client pings when the stream's keep-alives arrive, as its
    timers are too late.
    """
    daemon = hb_daemon(PRESENCE_TIMEOUT=str(HIDDEN_TIMEOUT), KEEPALIVE="1")
    # The client paces its pings by the server's Heartbeat-Presence-Timeout; a
    # server without it is told the timeout instead.
    answer = post_ping(daemon.port, '{"status": "0"}', userid=None, headers=auth("probe"))
    advertised = "heartbeat-presence-timeout" in answer[1]
    told = {} if advertised else {"presenceTimeout": HIDDEN_TIMEOUT}
    page = open_client(browser.new_context(), origin, daemon, watch=["alice"], throttle=True, **told)
    page.wait_for_function(f"hb.connection.state === 'live' && hb.connection.timeout === {HIDDEN_TIMEOUT}")
    wait_for(lambda: online(daemon.port), timeout=5)
    page.evaluate("hide()")
    deadline = time.monotonic() + 3 * HIDDEN_TIMEOUT
    while time.monotonic() < deadline:
        assert online(daemon.port), "went offline while hidden"
        time.sleep(0.2)


def test_closing_the_last_tab_takes_the_user_offline(hb_daemon, origin, browser):
    daemon = hb_daemon(PRESENCE_TIMEOUT="30", LEAVE_GRACE="1")
    context = browser.new_context()
    pages = [open_client(context, origin, daemon, watch=["alice"]) for _ in range(2)]
    wait_for(lambda: online(daemon.port), timeout=5)
    pages[0].close()
    time.sleep(1.5)
    assert online(daemon.port), "one tab closed of two: still online"
    pages[1].close()
    # A beacon to /leave, or the presence stream's end and LEAVE_GRACE (1 s).
    wait_for(lambda: not online(daemon.port), timeout=1 + 1)


def test_a_daemon_restart_the_client_is_back_within_its_backoff_and_exact(hb_daemon, origin, browser):
    daemon = hb_daemon()
    ping(daemon.port, "alice", "0")
    ping(daemon.port, "bob", "1")
    page = open_client(browser.new_context(), origin, daemon, watch=["alice", "bob"])
    page.wait_for_function("hb.connection.state === 'live' && presenceMap().bob !== null")
    daemon.stop()
    page.wait_for_function("hb.connection.state === 'reconnecting'")
    daemon = hb_daemon(port=daemon.port)
    healthy_at = time.time()
    ping(daemon.port, "alice", "2")  # a change the page did not see happen
    page.wait_for_function("hb.connection.opens === 2", timeout=10_000)
    back_at = page.evaluate("connections.find((c) => c.state === 'live' && c.opens === 2).at") / 1000
    # The backoff's ceiling is 2 s; a loaded machine's connect comes on top.
    assert back_at - healthy_at < 2 + 1, f"back {back_at - healthy_at:.2f} s after the daemon"
    expected = status(daemon.port, "alice", "bob")
    page.wait_for_function("(want) => JSON.stringify(presenceMap()) === want", arg=json.dumps(expected, separators=(",", ":")))


def test_a_token_expiring_in_3_s_is_refreshed_with_no_gap(hb_daemon, origin, browser):
    daemon = hb_daemon(PRESENCE_TIMEOUT="3")
    page = open_client(browser.new_context(), origin, daemon, watch=["alice"], lifetime=3,
                       presenceTimeout=3)
    page.wait_for_function("hb.connection.state === 'live'")
    statuses = [str(n) for n in range(20)]
    for value in statuses:  # 8 s: the stream's token is replaced at least twice
        ping(daemon.port, "alice", value)
        assert online(daemon.port), "the page's user went offline"
        time.sleep(0.4)
    page.wait_for_function("presenceMap().alice.status === '19'")
    seen = [status for user, status, _ in page.evaluate("log") if user == "alice"]
    assert seen == statuses, "every change, in order, none lost"
    assert page.evaluate("tokensIssued") >= 3
    states = page.evaluate("connections.map((c) => c.state)")
    assert "reconnecting" not in states, states
    assert page.evaluate("hb.connection.opens") >= 3
    assert open_streams(daemon.port) == 1


def test_a_presence_stream_holds_the_device_with_no_pings(hb_daemon, origin, browser):
    daemon = hb_daemon(PRESENCE_TIMEOUT="2")
    page = open_client(browser.new_context(), origin, daemon, watch=["alice"])
    page.wait_for_function("hb.connection.presence === 'stream'")
    wait_for(lambda: online(daemon.port), timeout=5)
    pings = metric(daemon.port, "heartbeat_pings_accepted")
    deadline = time.monotonic() + 3 * 2
    while time.monotonic() < deadline:
        assert online(daemon.port), "went offline with its presence stream open"
        time.sleep(0.2)
    assert metric(daemon.port, "heartbeat_pings_accepted") == pings, "pinged while the stream held it"
