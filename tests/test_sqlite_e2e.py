"""The real daemon with its embedded store: what it acknowledged outlives ``kill -9``."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.clients import SSEClient, get, post_ping
from tests.helpers.processes import REPO, Daemon


def status(port: int, *userids: str) -> dict:
    query = "&".join(f"user={u}" for u in userids)
    code, _, body = get(port, f"/status?{query}")
    assert code == 200
    return json.loads(body)


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT])
def test_a_ping_outlives_the_daemon_and_is_a_new_streams_first_event(start_daemon, stop):
    daemon = start_daemon()
    assert post_ping(daemon.port, "status=7", content_type="application/x-www-form-urlencoded",
                     headers={"X-User-Claim": '{"userid": "alice", "clientid": "phone"}'})[0] == 200
    daemon.stop(stop)
    again = start_daemon(port=daemon.port)
    assert status(again.port, "alice")["alice"]["status"] == "7"
    stream = SSEClient(again.port, "/subscribe/alice")
    first = stream.event()
    assert (first["userid"], first["status"], first["online"]) == ("alice", "7", True)
    device = SSEClient(again.port, "/subscribe/alice/client/phone")
    assert device.event()["clientid"] == "phone"
    assert (daemon.cwd / "heartbeat.db").exists()


def test_a_thousand_pings_acknowledged_under_load_are_all_there_after_kill_9(start_daemon):
    daemon = start_daemon()
    users = [f"u{n}" for n in range(1000)]

    def ping(userid: str) -> int:
        return post_ping(daemon.port, f"s{userid}", userid=userid)[0]

    with ThreadPoolExecutor(32) as pool:
        codes = list(pool.map(ping, users))
    assert codes == [200] * 1000
    daemon.stop(signal.SIGKILL)
    again = start_daemon(port=daemon.port)
    seen = {}
    for start in range(0, 1000, 200):
        seen.update(status(again.port, *users[start:start + 200]))
    assert {u: state and state["status"] for u, state in seen.items()} == {u: f"s{u}" for u in users}


def test_an_online_user_still_goes_offline_on_time_after_a_restart(start_daemon):
    daemon = start_daemon(env={"PRESENCE_TIMEOUT": "3"})
    pinged = time.monotonic()
    assert post_ping(daemon.port, "1")[0] == 200
    daemon.stop(signal.SIGKILL)
    again = start_daemon(env={"PRESENCE_TIMEOUT": "3"}, port=daemon.port)
    stream = SSEClient(again.port, "/subscribe/alice")
    assert stream.event()["online"] is True
    offline = stream.event(timeout=6)
    assert offline["online"] is False and offline["status"] == "1"
    assert 3 <= time.monotonic() - pinged <= 5.5
    # Due while it was down: offline from the start.
    again.stop(signal.SIGKILL)
    late = start_daemon(env={"PRESENCE_TIMEOUT": "3"}, port=daemon.port)
    assert status(late.port, "alice")["alice"]["online"] is False


def refused(cwd: Path, database: str) -> tuple[int, str]:
    """Run the daemon with ``DATABASE=database``; its exit code and output, once it ends."""
    daemon = Daemon(cwd, env={"DATABASE": database})
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS",)}
    env.update(PYTHONPATH=str(REPO), DATABASE=database)
    done = subprocess.run(daemon.command(), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=30)
    return done.returncode, done.stdout + done.stderr


def assert_one_line(output: str, *words: str) -> None:
    lines = [line for line in output.splitlines() if line.startswith("heartbeat: ")]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    for word in words:
        assert word in lines[0], lines[0]


@contextmanager
def mounted(path: Path, options: str) -> Iterator[Path]:
    """A small tmpfs at ``path`` (mounting needs root; skipped without, except under CI)."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs under CI: {done.stderr!r}")
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_read_only_directory_is_one_line_and_a_non_zero_exit(tmp_path):
    with mounted(tmp_path / "ro", "ro,size=1m") as directory:
        code, output = refused(tmp_path, str(directory / "heartbeat.db"))
    assert code != 0
    assert_one_line(output, "DATABASE=", "heartbeat.db", "cannot create")


def test_a_file_that_is_not_a_database_is_refused_and_left_as_it_is(tmp_path):
    path = tmp_path / "heartbeat.db"
    path.write_bytes(b"\x00garbage\xff" * 500)
    before = path.read_bytes()
    code, output = refused(tmp_path, "heartbeat.db")
    assert code != 0
    assert_one_line(output, "DATABASE='heartbeat.db'", "not a SQLite database")
    assert path.read_bytes() == before


def test_another_programs_sqlite_file_is_refused_and_left_as_it_is(tmp_path):
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO orders VALUES (1, 9.5)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    code, output = refused(tmp_path, str(path))
    assert code != 0
    assert_one_line(output, "DATABASE=", "not heartbeat's")
    assert path.read_bytes() == before


def test_a_second_daemon_on_the_same_file_is_refused(start_daemon, tmp_path):
    first = start_daemon()
    assert post_ping(first.port, "1")[0] == 200
    path = tmp_path / "heartbeat.db"
    before = path.read_bytes()
    code, output = refused(tmp_path, "heartbeat.db")
    assert code != 0
    assert_one_line(output, "DATABASE='heartbeat.db'", "another process")
    assert path.read_bytes() == before
    assert post_ping(first.port, "2")[0] == 200


def _fill(directory: Path) -> Path:
    """Take every free byte of ``directory``'s file system."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 16, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler


def test_a_full_disk_answers_503_then_recovers(start_daemon, tmp_path):
    with mounted(tmp_path / "disk", "size=2m") as disk:
        daemon = start_daemon(env={"DATABASE": str(disk / "heartbeat.db")})
        assert post_ping(daemon.port, "before")[0] == 200
        filler = _fill(disk)
        codes = [post_ping(daemon.port, f"full{n}", userid=f"u{n}")[0] for n in range(5)]
        assert codes == [503] * 5
        assert get(daemon.port, "/health")[0] == 503
        assert status(daemon.port, "u0")["u0"] is None
        filler.unlink()
        daemon.wait_healthy(timeout=5)
        assert post_ping(daemon.port, "after")[0] == 200
        assert status(daemon.port, "alice")["alice"]["status"] == "after"
        daemon.stop()
        log = daemon.output()
        assert log.count("cannot write DATABASE=") == 1, log
        assert "takes writes again" in log
