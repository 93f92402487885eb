"""WORKERS: extra processes on the primary's listening socket."""

import json
import os
import re
import signal
import socket
import sys
import time

import pytest
from twisted.internet import tcp
from twisted.internet.defer import succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.usage import UsageError

from heartbeat.daemon.workers import (
    WorkerPool,
    inherited_endpoint,
    reuseport_sockets,
    worker_command,
)
from tests.helpers.clients import SSEClient, get, post_ping
from tests.helpers.waiting import wait_for


def test_worker_command_keeps_options_but_listen_and_workers():
    command = worker_command(
        {"redis": ":6379", "keepalive": "5", "listen": ":8080", "workers": "3", "cors-origins": None},
        socket.AF_INET6,
    )
    assert command[:2] == [sys.executable, "-c"]
    assert command[3:6] == ["-n", "--pidfile=", "heartbeat"]
    assert "--redis=:6379" in command and "--keepalive=5" in command
    assert command[-2:] == ["--listen=heartbeat-fd:3:domain=INET6", "--workers=1"]
    assert not any(arg.startswith(("--cors-origins", "--listen=:8080", "--workers=3")) for arg in command)


def test_inherited_endpoint_domains():
    assert inherited_endpoint(None, "3", "UNIX").addressFamily == socket.AF_UNIX
    assert inherited_endpoint(None, "5").fileno == 5
    with pytest.raises(ValueError):
        inherited_endpoint(None, "3", "BLUETOOTH")


class _Process:
    def __init__(self, pid):
        self.pid = pid
        self.signals = []

    def signalProcess(self, name):
        self.signals.append(name)


class _Port(tcp.Port):
    """A listening port whose socket is fd 7 (never really opened)."""

    def __init__(self):
        class Socket:
            family = socket.AF_INET

            @staticmethod
            def fileno():
                return 7

        self.socket = Socket()


class _Reactor(Clock):
    """A clock that records spawned processes."""

    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, protocol, executable, args, env, childFDs):
        process = _Process(1000 + len(self.spawned))
        self.spawned.append((protocol, args, env, childFDs, process))
        return process


def test_pool_spawns_on_the_listening_socket_restarts_and_stops(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    reactor = _Reactor()
    pool = WorkerPool(reactor, 2, {"redis": ":6379"}, lambda: succeed(_Port()))
    pool.startService()
    assert len(reactor.spawned) == 2
    protocol, args, env, fds, process = reactor.spawned[0]
    assert fds == {0: 0, 1: 1, 2: 2, 3: 7}
    assert "NOTIFY_SOCKET" not in env  # readiness is the primary's to tell
    # A worker that dies is started again after a pause.
    protocol.processEnded(Failure(ProcessTerminated(signal=9)))
    assert len(reactor.spawned) == 2
    reactor.advance(1)
    assert len(reactor.spawned) == 3
    # Stopping signals every live worker and waits for them.
    stopped = pool.stopService()
    live = [entry for entry in reactor.spawned[1:]]
    assert all(p.signals == ["TERM"] for *_, p in live)
    assert not stopped.called
    for protocol, *_ in live:
        protocol.processEnded(Failure(ProcessDone(0)))
    assert stopped.called
    reactor.advance(10)
    assert len(reactor.spawned) == 3  # nothing restarted, nothing killed
    assert all(p.signals == ["TERM"] for *_, p in live)


def test_a_worker_that_ignores_sigterm_is_killed():
    reactor = _Reactor()
    pool = WorkerPool(reactor, 1, {}, lambda: succeed(_Port()))
    pool.startService()
    pool.stopService()
    reactor.advance(5)
    assert reactor.spawned[0][4].signals == ["TERM", "KILL"]


def test_a_draining_worker_is_given_drain_seconds_more():
    reactor = _Reactor()
    pool = WorkerPool(reactor, 1, {}, lambda: succeed(_Port()), drain_seconds=3)
    pool.startService()
    pool.stopService()
    reactor.advance(7.9)
    assert reactor.spawned[0][4].signals == ["TERM"]
    reactor.advance(0.2)
    assert reactor.spawned[0][4].signals == ["TERM", "KILL"]


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def test_two_workers_share_the_port_and_every_ping(redis_server, start_daemon):
    daemon = start_daemon(["--redis", redis_server.address, "--workers", "2"])
    primary = daemon.proc.pid
    (worker,) = wait_for(lambda: _children(primary))
    # A worker that dies is replaced.
    os.kill(worker, signal.SIGKILL)
    (worker,) = wait_for(lambda: _children(primary) - {worker})
    # Both processes answer on the one port: connections land on either.
    wait_for(lambda: {_health_pid(daemon.port) for _ in range(20)} == {primary, worker})
    # Streams land on both too, and every ping reaches every stream.
    streams = [SSEClient(daemon.port, "/subscribe/alice") for _ in range(8)]
    for status in ("0", "1", "2"):
        assert post_ping(daemon.port, status)[0] == 200
        assert [s.event()["status"] for s in streams] == [status] * 8
    # SIGTERM to the primary stops every process, each ending its streams.
    started = time.monotonic()
    daemon.stop()
    assert time.monotonic() - started < 5
    assert all(s.ended() for s in streams)
    assert not os.path.exists(f"/proc/{worker}") or _zombie(worker)
    # Nothing closed twice: that once hit Twisted's child-waker pipe (EBADF).
    assert "Traceback" not in daemon.output() and "Errno 9" not in daemon.output()


def _health_pid(port: int) -> int | None:
    """The pid of the process that answered, if it is ready to serve."""
    status, _, body = get(port, "/health")
    return json.loads(body)["pid"] if status == 200 else None


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] == "Z"


@pytest.mark.parametrize("description, expected", [
    ("tcp:0:interface=127.0.0.1:backlog=64", ("127.0.0.1", socket.AF_INET)),
    ("tcp6:0:interface=\\:\\:1:backlog=64", ("::1", socket.AF_INET6)),
])
def test_reuseport_sockets_share_one_address(description, expected):
    sockets = reuseport_sockets(description, 3)
    try:
        addresses = {s.getsockname()[:2] for s in sockets}
        assert len(sockets) == 3 and len(addresses) == 1
        (host, port), = addresses
        assert (host, sockets[0].family) == expected and port > 0
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in sockets)
    finally:
        for s in sockets:
            s.close()


@pytest.mark.parametrize("description", [
    "unix:/tmp/x.sock:backlog=5", "systemd:domain=INET:index=0", "tcp:8080:backlog=5:extra=1",
])
def test_other_endpoints_share_the_primary_socket(description):
    assert reuseport_sockets(description, 2) is None


def test_an_address_in_use_is_a_bad_listen_setting():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        with pytest.raises(UsageError, match="^bad setting LISTEN"):
            reuseport_sockets(f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1", 2)
    finally:
        taken.close()


def test_connections_opened_together_reach_both_processes(redis_server, start_daemon):
    """What wrk -c64 does: every keep-alive connection opened at once."""
    daemon = start_daemon(["--redis", redis_server.address, "--workers", "2"])
    (worker,) = wait_for(lambda: _children(daemon.proc.pid))
    wait_for(lambda: _health_pid(daemon.port) is not None)
    connections = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(32)]
    pids = set()
    for conn in connections:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    for conn in connections:
        conn.settimeout(10)
        reply = b""
        while (found := re.search(rb'"pid": (\d+)[,}]', reply)) is None:
            reply += conn.recv(4096)
        pids.add(int(found[1]))
        conn.close()
    assert pids == {daemon.proc.pid, worker}
