"""A stop signal with streams open, over TCP or TLS: every one ends cleanly, and fast; a busy port."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.helpers.clients import SSEClient, health
from tests.helpers.processes import Daemon, room_for_streams

STREAMS = 2000


# (how the daemon listens, the signal, how many streams are open): thousands over
# plain TCP; a few with each stop signal; a few over TLS, whose clients never
# answer the server's close_notify, so the drain waits its full DRAIN_TIMEOUT.
STOPS = [
    pytest.param("tcp", signal.SIGTERM, STREAMS, id="tcp-SIGTERM-thousands"),
    pytest.param("tcp", signal.SIGTERM, 50, id="tcp-SIGTERM-50"),
    pytest.param("tcp", signal.SIGINT, 50, id="tcp-SIGINT-50"),
    pytest.param("tls", signal.SIGTERM, 50, id="tls-SIGTERM-50"),
]


@pytest.fixture
def open_daemon(request: pytest.FixtureRequest, start_daemon) -> Callable:
    """``open_daemon(listen)``: a started daemon on plain TCP or TLS, and the client context."""
    def start(listen: str) -> tuple[Daemon, ssl.SSLContext | None]:
        if listen == "tcp":
            return start_daemon(), None
        return request.getfixturevalue("start_tls_daemon")(), request.getfixturevalue("tls_trust")

    return start


@pytest.mark.parametrize(("listen", "sig", "wanted"), STOPS)
def test_a_stop_signal_ends_every_open_stream_cleanly_within_5s(open_daemon, listen, sig, wanted):
    n = room_for_streams(wanted)
    assert n >= min(wanted, 1000), "the open-file limit leaves too little room for the test"
    daemon, tls = open_daemon(listen)
    streams = [SSEClient(daemon.port, f"/subscribe/u{i % 200}", tls=tls) for i in range(n)]
    try:
        assert all(stream.status == 200 for stream in streams)
        assert health(daemon.port, tls)["streams"] == n

        started = time.monotonic()
        daemon.proc.send_signal(sig)
        assert daemon.proc.wait(10) == -sig
        took = time.monotonic() - started
        print(f"{sig.name} over {listen} with {n} streams open: exited in {took:.2f}s")
        assert took < 5
        # Each response ended with its terminating chunk.
        assert all(stream.ended() for stream in streams)
    finally:
        for stream in streams:
            stream.close()
    assert "heartbeat stopped" in daemon.output()
    assert "Traceback" not in daemon.output()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_busy_port_ends_start_up_at_once_with_one_line(tmp_path, redis_server, workers):
    """Under systemd, a daemon that listens nowhere must not look active."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        daemon = Daemon(tmp_path, ["--workers", str(workers), "--redis", redis_server.address],
                        port=taken.getsockname()[1])
        started = time.monotonic()
        done = subprocess.run(daemon.command(), cwd=tmp_path, env=daemon.environment(),
                              capture_output=True, text=True, timeout=15)
        took = time.monotonic() - started
    print(f"busy port, WORKERS={workers}: exit {done.returncode} in {took:.2f}s")
    assert done.returncode != 0 and took < 5
    output = done.stdout + done.stderr
    refusals = [line for line in output.splitlines() if "cannot listen" in line]
    assert len(refusals) == 1 and "LISTEN" in refusals[0] and "in use" in refusals[0]
    assert "Traceback" not in output and "heartbeat serving" not in output
