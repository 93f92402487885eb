"""The daemon under systemd's protocols: readiness, stopping, socket activation."""

from __future__ import annotations

import os
import signal
import socket
import sys

import pytest

from tests.helpers.clients import SSEClient, get, post_ping
from tests.helpers.processes import TWISTD, Daemon, RedisServer, free_port


@pytest.fixture
def notify_socket():
    """An abstract-namespace datagram socket standing in for systemd's."""
    name = f"heartbeat-e2e-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(15)
        yield "@" + name, sock


def test_ready_when_serving_and_stopping_on_sigterm(start_daemon, notify_socket):
    address, sock = notify_socket
    daemon = start_daemon(env={"NOTIFY_SOCKET": address})
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
    assert post_ping(daemon.port, "0", content_type="text/plain")[0] == 200
    assert daemon.stop() == -signal.SIGTERM  # twistd ends by its stop signal, cleanly
    assert sock.recv(4096) == b"STOPPING=1"


def test_ready_waits_for_redis(start_daemon, notify_socket, tmp_path):
    address, sock = notify_socket
    port = free_port()
    daemon = start_daemon(["--redis", f"127.0.0.1:{port}"], env={"NOTIFY_SOCKET": address},
                          healthy=False)
    sock.settimeout(0.5)
    with pytest.raises(socket.timeout):
        sock.recv(4096)  # listening, but Redis is not there: not ready
    assert get(daemon.port, "/health")[0] == 503
    redis = RedisServer(tmp_path, port=port).start()
    try:
        sock.settimeout(15)
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
        assert get(daemon.port, "/health")[0] == 200
    finally:
        daemon.stop()
        redis.stop()


# Run in the child before twistd: what systemd does between fork and exec.
_AS_SYSTEMD = """
import os, sys
fd = int(os.environ.pop("ACTIVATED_FD"))
os.dup2(fd, 3)
os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[1], sys.argv[1:])
"""


class ActivatedDaemon(Daemon):
    """Started as systemd starts a socket-activated service.

    The listening socket arrives as fd 3 with ``LISTEN_FDS=1``,
    ``LISTEN_FDNAMES`` (systemd sets it; Twisted ignores the fds without it)
    and ``LISTEN_PID`` naming the daemon's own pid, which only the process
    itself knows: a small launcher sets it, then execs twistd in place.
    """

    def __init__(self, cwd, listening: socket.socket, env: dict[str, str]) -> None:
        super().__init__(cwd, port=listening.getsockname()[1], env={
            **env, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "heartbeat.socket", "LISTEN": "systemd:domain=INET:index=0",
            "ACTIVATED_FD": str(listening.fileno()),
        })
        self.listening = listening

    def command(self) -> list[str]:
        return [sys.executable, "-c", _AS_SYSTEMD, TWISTD, "-n", "--pidfile=", "heartbeat"]

    def start(self) -> ActivatedDaemon:
        super().start(pass_fds=(self.listening.fileno(),))
        return self


def test_socket_activation(tmp_path, notify_socket):
    address, sock = notify_socket
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(64)
    daemon = ActivatedDaemon(tmp_path, listening, {"NOTIFY_SOCKET": address}).start()
    try:
        listening.close()  # only the daemon holds it now, as with systemd
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
        assert post_ping(daemon.port, '{"status": "2"}')[0] == 200
        stream = SSEClient(daemon.port, "/subscribe/alice")
        assert stream.event()["status"] == "2"
        assert post_ping(daemon.port, '{"status": "3"}')[0] == 200
        assert stream.event()["status"] == "3"
        stream.close()
    finally:
        assert daemon.stop() == -signal.SIGTERM
    assert "systemd:domain=INET:index=0" in daemon.output()
