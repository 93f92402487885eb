"""The README says what is true: its shell examples run as written (on a free port
instead of theirs), and its code map names every module."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import jwt

from tests.helpers.processes import REPO, TWISTD, Daemon, free_port, need_binary, wait_for_port
from tests.helpers.waiting import wait_for

SECRET = "a-long-enough-hs256-secret-for-the-tests"


def sh_blocks(after_heading: str) -> list[str]:
    """The ```sh blocks of the README section whose heading starts with ``after_heading``."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n{after_heading}")
    end = text.find("\n#", start + 1)
    return re.findall(r"```sh\n(.*?)```", text[start:end], re.DOTALL)


def commands(block: str) -> list[str]:
    """Each command of a block, continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]


def user_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """A user's shell with this venv's twistd first on PATH, and ``env``."""
    environment = {**Daemon(REPO).environment(), **(env or {})}
    environment["PATH"] = f"{Path(TWISTD).parent}{os.pathsep}{environment['PATH']}"
    return environment


def shell(directory: Path, port: int, line: str, old_port: str,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``line`` through bash, its port ``old_port`` made ``port``."""
    return subprocess.run(["bash", "-c", line.replace(old_port, str(port))], cwd=directory,
                          env=user_environment(env), capture_output=True, text=True,
                          timeout=30)


def test_the_tls_example_serves_https_with_its_self_signed_certificate(tmp_path):
    need_binary("openssl")
    need_binary("curl")
    server, client = sh_blocks("### TLS")[:2]
    make_certificate, run = commands(server)
    assert make_certificate.startswith("openssl ") and "twistd -n heartbeat" in run
    port = free_port()
    assert shell(tmp_path, port, make_certificate, "8443").returncode == 0
    with open(tmp_path / "daemon.log", "wb") as log:
        # bash runs a lone command in its own place: the signal reaches twistd.
        daemon = subprocess.Popen(["bash", "-c", run.replace("8443", str(port))],
                                  cwd=tmp_path, env=user_environment(), stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, daemon)
        health, ping, insecure = commands(client)
        wait_for(lambda: shell(tmp_path, port, health, "8443").returncode == 0)
        answer = shell(tmp_path, port, health + " -sS", "8443")
        assert json.loads(answer.stdout)["status"] == "ok", answer.stderr
        answer = shell(tmp_path, port, ping + " -sS -w '%{http_code}'", "8443")
        assert answer.stdout == "200", answer.stderr
        answer = shell(tmp_path, port, insecure + " -sS", "8443")
        assert json.loads(answer.stdout)["status"] == "ok", answer.stderr
    finally:
        daemon.terminate()
        daemon.wait(10)
    assert "heartbeat stopped" in (tmp_path / "daemon.log").read_text()


def test_the_jwt_example_pings(start_daemon, tmp_path):
    need_binary("curl")
    daemon = start_daemon(env={"JWT_SECRET": SECRET})
    token = jwt.encode({"userid": "alice", "clientid": "c1"}, SECRET, algorithm="HS256")
    (block,) = sh_blocks("**Built-in JWT")
    ping, _subscribe = commands(block)
    answer = shell(tmp_path, daemon.port, ping + " -sS -w '%{http_code}'", "8080",
                   env={"JWT": token})
    assert answer.stdout == "200", answer.stdout + answer.stderr


def test_the_code_map_names_every_module():
    text = (REPO / "README.md").read_text()
    code_map = text[text.index("\n## Code map"):text.index("\n## ", text.index("\n## Code map") + 1)]
    modules = [path for path in (REPO / "heartbeat").rglob("*.py") if path.name != "__init__.py"]
    assert modules
    assert [str(path.relative_to(REPO)) for path in modules
            if f"{path.name}`" not in code_map] == []
