"""SIGTERM with thousands of streams open: every one ends cleanly, and fast."""

from __future__ import annotations

import resource
import selectors
import signal
import socket
import subprocess
import time

import pytest

from tests.support import Daemon, get

STREAMS = 2000


def _room_for(n: int) -> int:
    """Raise our open-file limit (the daemon inherits it); how many streams fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 200
    if soft < want and (hard == resource.RLIM_INFINITY or hard >= want):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return min(n, soft - 200)


def _open_streams(port: int, n: int) -> list[socket.socket]:
    socks = []
    for i in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(f"GET /subscribe/u{i % 200} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        socks.append(sock)
    for sock in socks:
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200")
    return socks


def _read_to_end(socks: list[socket.socket], timeout: float,
                 ends: list[float] | None = None) -> dict[socket.socket, bytes]:
    """Everything each socket receives until the server closes it; ``ends``
    gets the ``time.monotonic()`` of each close."""
    received = {sock: b"" for sock in socks}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        open_ = len(socks)
        while open_ and time.monotonic() < deadline:
            for key, _ in selector.select(0.5):
                data = key.fileobj.recv(65536)
                received[key.fileobj] += data
                if not data:
                    selector.unregister(key.fileobj)
                    open_ -= 1
                    if ends is not None:
                        ends.append(time.monotonic())
    assert open_ == 0, f"{open_} connections still open"
    return received


def test_sigterm_ends_thousands_of_streams_cleanly_within_5s(start_daemon):
    n = _room_for(STREAMS)
    assert n >= 1000, "the open-file limit leaves too little room for the test"
    daemon = start_daemon()
    socks = _open_streams(daemon.port, n)
    try:
        assert f"heartbeat_open_streams {n}.0" in get(daemon.port, "/metrics")[2].decode()

        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(10) == -signal.SIGTERM
        took = time.monotonic() - started
        print(f"stopped with {n} streams open in {took:.2f}s")
        assert took < 5

        received = _read_to_end(socks, timeout=10)
        # Each response ended with its terminating chunk, then the connection closed.
        assert all(data.endswith(b"0\r\n\r\n") for data in received.values())
    finally:
        for sock in socks:
            sock.close()
    assert "heartbeat stopped" in daemon.output()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_with_50_streams_open_exits_within_5s(start_daemon, sig):
    daemon = start_daemon()
    socks = _open_streams(daemon.port, 50)
    try:
        started = time.monotonic()
        daemon.proc.send_signal(sig)
        assert daemon.proc.wait(10) == -sig
        took = time.monotonic() - started
        print(f"{sig.name} with 50 streams open: exited in {took:.2f}s")
        assert took < 5
        received = _read_to_end(socks, timeout=10)
        assert all(data.endswith(b"0\r\n\r\n") for data in received.values())
    finally:
        for sock in socks:
            sock.close()
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
