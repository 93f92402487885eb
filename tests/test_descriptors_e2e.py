"""Running out of file descriptors (SPEC §5), on the real daemon under ``prlimit``."""

from __future__ import annotations

import json
import resource
import socket
import time
from pathlib import Path

import pytest

from tests.helpers.clients import get
from tests.helpers.in_memory import request_bytes
from tests.helpers.processes import Daemon, need_binary
from tests.helpers.waiting import wait_for


class Limited(Daemon):
    """The daemon started with an open files limit of ``soft:hard``."""

    def __init__(self, cwd: Path, soft: int, hard: int) -> None:
        super().__init__(cwd)
        self.nofile = f"--nofile={soft}:{hard}"

    def command(self) -> list[str]:
        return [need_binary("prlimit"), self.nofile, *super().command()]

    def open_files(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
        raise AssertionError("no open files limit")


@pytest.fixture
def limited(tmp_path):
    started: list[Daemon] = []

    def start(soft: int, hard: int) -> Limited:
        daemon = Limited(tmp_path, soft, hard)
        started.append(daemon)
        return daemon.start()

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture(autouse=True)
def _room_for_our_own_sockets():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_limit_is_raised_to_the_hard_one(limited):
    daemon = limited(256, 4096)
    assert daemon.open_files() == 4096
    # And MAX_STREAMS is measured against the raised limit, not the soft one.
    assert "does not fit in 4096 open files" in daemon.output()


def _answer(sock: socket.socket) -> bytes:
    """The head of what the server answers on ``sock`` (it may close right after)."""
    sock.settimeout(10)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer


def _refusal_lines(daemon: Daemon) -> list[str]:
    return [line for line in daemon.output().splitlines() if "out of file descriptors" in line]


def test_past_the_hard_limit_streams_are_refused_with_503_and_health_answers(limited):
    daemon = limited(256, 256)
    output = daemon.output()
    warnings = [line for line in output.splitlines() if "MAX_STREAMS=10000" in line]
    assert len(warnings) == 1 and "256" in warnings[0], output
    lines_before = len(output.splitlines())
    streams: list[socket.socket] = []
    answers: list[bytes] = []
    try:
        for n in range(300):
            sock = socket.create_connection(("127.0.0.1", daemon.port))
            sock.sendall(request_bytes("GET", f"/subscribe/u{n}"))
            answers.append(_answer(sock))
            if answers[-1].startswith(b"HTTP/1.1 200"):
                streams.append(sock)
            else:
                sock.close()
            if n % 50 == 0:
                assert get(daemon.port, "/health")[0] == 200
        opened = len(streams)
        assert 100 < opened < 256
        refused = answers[opened:]
        assert all(a.startswith(b"HTTP/1.1 503") and b"Retry-After" in a for a in refused)
        assert get(daemon.port, "/health")[0] == 200
        assert len(daemon.output().splitlines()) - lines_before < 5

        # Connections that send nothing hold the rest: accept has no descriptor left.
        idle = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(150)]
        try:
            time.sleep(0.5)
            code, headers, body = get(daemon.port, "/health")
            assert code == 503 and headers["retry-after"] and json.loads(body)["error"]
            assert all(get(daemon.port, "/health")[0] == 503 for _ in range(20))
        finally:
            for sock in idle:
                sock.close()
        wait_for(lambda: get(daemon.port, "/health")[0] == 200, timeout=10)
        # Refusals logged with a count, at most once a second: a handful of lines.
        assert 1 <= len(_refusal_lines(daemon)) < 5, _refusal_lines(daemon)
    finally:
        for sock in streams:
            sock.close()
