"""The app's backend routes against the real daemon and its SQLite file:
keys, bulk status, paging who is online, retention, erasure (to the file's
bytes, across a restart), disconnect; the probes while Redis is down."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.helpers.backend_calls import (
    KEY,
    ROUTES,
    old_device_is_forgotten,
    page_through,
    ping_many,
    request,
    status,
)
from tests.helpers.clients import SSEClient, get, post_ping
from tests.helpers.processes import REPO, Daemon
from tests.helpers.waiting import wait_for

NEW_KEY = "backend-key-2"


@pytest.fixture
def backend(start_daemon) -> Daemon:
    return start_daemon(env={"API_KEY": f"{KEY},{NEW_KEY}", "DATABASE": "hb.db"})


def test_each_backend_route_with_no_wrong_and_rotated_keys(backend):
    for method, path, body in ROUTES:
        assert request(backend.port, method, path, body, {})[0] == 401
        assert request(backend.port, method, path, body,
                       {"Authorization": "Bearer backend-key-3"})[0] == 401
        for key in (KEY, NEW_KEY):
            code = request(backend.port, method, path, body, {"Authorization": f"Bearer {key}"})[0]
            assert code in (200, 204), (method, path, code)


def test_without_api_key_backend_routes_answer_403(daemon):
    for method, path, body in ROUTES:
        code, answer = request(daemon.port, method, path, body)
        assert code == 403 and "API_KEY" in json.loads(answer)["error"]


def test_bulk_status_of_ten_thousand_users_and_online_paging(backend):
    online = [f"user-{i:05d}" for i in range(0, 10_000, 20)]  # 500 of them
    ping_many(backend.port, online)
    users = [f"user-{i:05d}" for i in range(10_000)]
    started = time.monotonic()
    states = status(backend.port, users)
    took = time.monotonic() - started
    assert list(states) == users
    assert sum(1 for s in states.values() if s is not None) == len(online)
    assert list(status(backend.port, users, "?online=only")) == online
    print(f"POST /status with 10,000 users: {took * 1000:.0f} ms")

    assert json.loads(request(backend.port, "GET", "/online")[1]) == {"count": len(online)}
    seen = page_through(backend.port, 64)
    assert sorted(seen) == online and len(seen) == len(set(seen))
    big = json.dumps({"users": ["u" * 200] * 6000}).encode()
    assert request(backend.port, "POST", "/status", big)[0] == 413


def test_a_device_past_device_retention_is_forgotten(start_daemon):
    daemon = start_daemon(env={"API_KEY": KEY, "DEVICE_RETENTION": "2s"})
    old_device_is_forgotten(daemon.port, daemon.port)


def _file_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.glob("hb.db*")) if p.is_file())


def only_the_erased_change_left(directory: Path, userid: str) -> bool:
    """Whether the file holds nothing of ``userid`` but their one erased change
    in the feed (SPEC §2: it goes with the feed's retention): its row and its
    index entry are the id's only two copies in the file's bytes."""
    import sqlite3

    conn = sqlite3.connect(f"file:{directory / 'hb.db'}?mode=ro", uri=True)
    try:
        rows = [conn.execute(f"SELECT count(*) FROM {table} WHERE userid = ?", (userid,)).fetchone()[0]
                for table in ("users", "devices")]
        kinds = [kind for (kind,) in conn.execute("SELECT type FROM changes WHERE userid = ?",
                                                  (userid,))]
    finally:
        conn.close()
    return rows == [0, 0] and kinds == ["erased"] and _file_bytes(directory).count(
        userid.encode()) == 2


def test_erase_leaves_no_trace_in_the_file_and_across_a_restart(tmp_path, start_daemon):
    env = {"API_KEY": KEY, "DATABASE": "hb.db"}
    daemon = start_daemon(env=env)
    gone = "erase-me-7f3a9c"
    # Enough users that the tables span many pages, and the user is pinged
    # from two devices, with statuses of different lengths (rows rewritten).
    ping_many(daemon.port, [f"other-{i:05d}" for i in range(3000)])
    for clientid, body in (("phone", "0"), ("web", "away for a while"), ("phone", "1")):
        claim = {"X-User-Claim": json.dumps({"userid": gone, "clientid": clientid})}
        assert post_ping(daemon.port, body, headers=claim)[0] == 200
    ping_many(daemon.port, [f"later-{i:05d}" for i in range(1000)])
    assert status(daemon.port, [gone])[gone] is not None
    assert gone.encode() in _file_bytes(tmp_path)

    watcher = SSEClient(daemon.port, f"/subscribe/{gone}")
    assert watcher.event()["userid"] == gone
    own = SSEClient(daemon.port, "/subscribe/other-00001",
                    {"X-User-Claim": json.dumps({"userid": gone})})
    assert request(daemon.port, "DELETE", f"/users/{gone}")[0] == 204
    assert watcher.event() == {"userid": gone, "online": False, "erased": True}
    assert own.ended()
    assert status(daemon.port, [gone]) == {gone: None}
    assert only_the_erased_change_left(tmp_path, gone)
    assert json.loads(request(daemon.port, "GET", "/online")[1])["count"] == 4000
    watcher.close()
    own.close()

    daemon.stop()
    daemon = start_daemon(env=env)
    assert status(daemon.port, [gone, "other-00001"])[gone] is None
    assert status(daemon.port, ["other-00001"])["other-00001"] is not None
    daemon.stop()
    assert only_the_erased_change_left(tmp_path, gone)


def test_erase_from_the_command_line(tmp_path, start_daemon):
    import subprocess
    import sys

    env = {"API_KEY": KEY, "DATABASE": "hb.db"}
    daemon = start_daemon(env=env)
    ping_many(daemon.port, ["keep", "cli-gone-42"])
    command = [sys.executable, "-m", "heartbeat.admin", "erase", "cli-gone-42"]
    run_env = {**daemon.environment(), "DATABASE": "hb.db", "PYTHONPATH": str(REPO)}
    busy = subprocess.run(command, cwd=tmp_path, env=run_env, capture_output=True, text=True)
    assert busy.returncode != 0 and "DELETE /users/" in busy.stderr  # the daemon holds the file
    daemon.stop()
    done = subprocess.run(command, cwd=tmp_path, env=run_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert only_the_erased_change_left(tmp_path, "cli-gone-42")
    daemon = start_daemon(env=env)
    assert status(daemon.port, ["keep", "cli-gone-42"]) == {
        "keep": status(daemon.port, ["keep"])["keep"], "cli-gone-42": None}


def test_disconnect_ends_the_users_own_streams(backend):
    assert post_ping(backend.port, "0", userid="dave")[0] == 200
    own = SSEClient(backend.port, "/subscribe/erin", {"X-User-Claim": json.dumps({"userid": "dave"})})
    watcher = SSEClient(backend.port, "/subscribe/dave")
    assert watcher.event()["online"] is True
    assert request(backend.port, "POST", "/users/dave/disconnect")[0] == 204
    assert own.ended()
    assert request(backend.port, "POST", "/users/dave/disconnect?leave=1")[0] == 204
    assert watcher.event()["online"] is False
    watcher.close()


def test_probes_while_redis_is_stopped(start_daemon, redis_server):
    daemon = start_daemon(env={"REDIS": redis_server.address, "JWT_SECRET": "s" * 32})
    # Ready once the store has read what it keeps, maybe a moment after /health answers.
    wait_for(lambda: get(daemon.port, "/readyz")[0] == 200, 10)
    redis_server.stop()
    wait_for(lambda: get(daemon.port, "/readyz")[0] == 503, 20)
    assert get(daemon.port, "/livez")[0] == 200
