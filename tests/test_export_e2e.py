"""``python -m heartbeat.store.export``: from the embedded store to a real redis-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers.claims import claim_header
from tests.helpers.clients import get, post_ping
from tests.helpers.processes import REPO


def export(cwd, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "heartbeat.store.export", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)


def status(port: int) -> dict:
    code, _, body = get(port, "/status?user=alice&user=bob&user=carol")
    assert code == 200
    return json.loads(body)


def test_the_embedded_state_moves_to_redis(start_daemon, redis_server, tmp_path):
    embedded = start_daemon()
    assert post_ping(embedded.port, "1", headers=claim_header("alice", "phone"))[0] == 200
    assert post_ping(embedded.port, "2", headers=claim_header("alice", "desk"))[0] == 200
    assert post_ping(embedded.port, "3", headers=claim_header("bob", "phone"))[0] == 200
    code, _, _ = post_ping(embedded.port, "", headers=claim_header("bob", "phone"), path="/leave")
    assert code == 200
    before = status(embedded.port)

    running = export(tmp_path, redis_server.address)
    assert running.returncode != 0 and "another process" in running.stderr
    embedded.stop()

    done = export(tmp_path, redis_server.address, "--database", "heartbeat.db")
    assert done.returncode == 0, done.stderr
    assert "copied 2 users (3 devices)" in done.stdout
    assert redis_server.command("HGET", "heartbeat:alice", "status") == b"2\n"

    scaled = start_daemon(["--redis", redis_server.address])
    assert status(scaled.port) == before
    assert before["alice"]["online"] is True and before["bob"]["online"] is False
    assert before["carol"] is None


def test_a_bad_redis_setting_is_one_line(tmp_path):
    done = export(tmp_path, "nowhere")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "REDIS='nowhere'" in done.stderr
