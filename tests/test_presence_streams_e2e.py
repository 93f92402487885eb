"""Presence streams (SPEC §3) against the real daemon: held with no ping, the grace, dead clients.

PRESENCE_TIMEOUT is 2 s and LEAVE_GRACE 2 s here, so the suite stays fast; the
embedded store sweeps every second.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers.claims import claim_header
from tests.helpers.clients import SSEClient, post_ping
from tests.helpers.processes import REPO, need_binary

TIMEOUT = 2
GRACE = 2
# How late an offline event may come on a loaded machine, past when it is due.
SLACK = 2.5


def held_daemon(start_daemon, grace: float = GRACE):  # type: ignore[no-untyped-def]
    return start_daemon(["--presence-timeout", str(TIMEOUT), "--leave-grace", str(grace),
                         "--keepalive", "1"])


def open_presence(port: int, status: str = "0", path: str = "/subscribe/bob") -> SSEClient:
    return SSEClient(port, f"{path}?presence={status}", claim_header("alice", "web"))


def test_a_presence_stream_holds_its_device_with_no_ping_and_the_grace_follows_its_end(
        start_daemon):
    daemon = held_daemon(start_daemon)
    watcher = SSEClient(daemon.port, "/subscribe/alice")
    device = SSEClient(daemon.port, "/subscribe/alice/client/web")
    opened = time.time()
    stream = open_presence(daemon.port, "2")
    for w in (watcher, device):
        event = w.event()
        assert (event["status"], event["online"]) == ("2", True)
        assert abs(event["time"] - opened) <= 1
    # Three timeouts with no ping: nothing changes.
    watcher.no_event(3 * TIMEOUT)
    device.no_event(0.1)
    stream.close()
    closed = time.monotonic()
    watcher.no_event(GRACE - 0.3)  # not before the grace
    event = watcher.event(timeout=SLACK + 0.3)
    assert (event["status"], event["online"]) == ("2", False)
    assert GRACE - 0.3 <= time.monotonic() - closed <= GRACE + SLACK
    assert device.event()["online"] is False
    watcher.no_event(TIMEOUT)  # once


def test_a_stream_reopened_within_the_grace_shows_watchers_no_offline(start_daemon):
    daemon = held_daemon(start_daemon)
    watcher = SSEClient(daemon.port, "/subscribe/alice")
    stream = open_presence(daemon.port)
    assert watcher.event()["online"] is True
    stream.close()
    time.sleep(GRACE / 2)  # a page reload
    stream = open_presence(daemon.port)
    assert watcher.event()["online"] is True  # the reopening is a ping
    watcher.no_event(GRACE + TIMEOUT + 1)
    stream.close()
    assert watcher.event(timeout=GRACE + SLACK)["online"] is False


def test_post_leave_is_immediate_and_the_open_stream_no_longer_holds_the_device(start_daemon):
    daemon = held_daemon(start_daemon)
    watcher = SSEClient(daemon.port, "/subscribe/alice")
    stream = open_presence(daemon.port)
    assert watcher.event()["online"] is True
    assert post_ping(daemon.port, "", path="/leave",
                     headers=claim_header("alice", "web"), userid=None)[0] == 200
    assert watcher.event(timeout=1)["online"] is False
    watcher.no_event(2 * TIMEOUT)
    assert stream.frame(timeout=2)  # the stream itself stays open (a keep-alive)


class StallingProxy:
    """A TCP proxy whose upstream side stops reading when told to, and never closes.

    Its upstream socket has a tiny receive buffer, so what the server sends
    after the stall soon meets a closed window, as from a client gone quiet.
    """

    def __init__(self, upstream_port: int) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.upstream_port = upstream_port
        self.stalled = threading.Event()
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.socket()
        upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        upstream.connect(("127.0.0.1", self.upstream_port))
        self.sockets += [client, upstream]
        threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, stalls: bool = False) -> None:
        try:
            while not (stalls and self.stalled.is_set()):
                source.settimeout(0.1)
                try:
                    data = source.recv(4096)
                except TimeoutError:
                    continue
                if not data:
                    return
                sink.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def test_a_client_that_stops_reading_and_never_closes_is_offline_within_the_timeout_and_grace(
        start_daemon):
    daemon = held_daemon(start_daemon, grace=1)
    proxy = StallingProxy(daemon.port)
    try:
        watcher = SSEClient(daemon.port, "/subscribe/alice")
        # The presence stream watches a chatty user, so the server has bytes to send.
        stream = SSEClient(proxy.port, "/subscribe/chatty?presence=0", claim_header("alice", "web"))
        assert watcher.event()["online"] is True
        proxy.stalled.set()
        stalled = time.monotonic()
        for i in range(60):
            post_ping(daemon.port, f"{i:064d}", userid="chatty")
        event = watcher.event(timeout=TIMEOUT + 1 + SLACK + 3)
        assert event["online"] is False
        assert time.monotonic() - stalled <= TIMEOUT + 1 + SLACK
        stream.close()
    finally:
        proxy.close()


def test_a_stop_gives_the_held_device_its_grace_across_the_restart(start_daemon):
    grace = 10  # room for a restart on a loaded machine
    daemon = held_daemon(start_daemon, grace=grace)
    stream = open_presence(daemon.port)
    stream.frame()
    time.sleep(TIMEOUT)  # renewed meanwhile
    daemon.stop()
    stopped = time.monotonic()
    stream.close()
    again = held_daemon(start_daemon, grace=grace)
    watcher = SSEClient(again.port, "/subscribe/alice")
    # Without the grace kept on disk the device would have timed out already.
    assert watcher.event()["online"] is True
    remaining = grace - (time.monotonic() - stopped)
    assert remaining > 1, "the restart took longer than the grace"
    watcher.no_event(remaining - 1)
    assert watcher.event(timeout=1 + SLACK + 1)["online"] is False


def test_a_client_that_vanishes_without_a_fin_is_offline_within_the_timeout_and_grace():
    """A phone in a tunnel: its packets stop, both ways (a private network, as root)."""
    for binary in ("unshare", "nsenter", "ip"):
        need_binary(binary)
    if os.geteuid() != 0 or subprocess.run(["unshare", "-n", "true"]).returncode != 0:
        pytest.skip("needs root for a private network namespace")
    timeout, grace = 4, 1
    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.helpers.vanish", str(timeout), str(grace)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["online"] is False
    # Found within PRESENCE_TIMEOUT, then the grace and a sweep's second (+ a loaded machine).
    assert found["seconds"] <= timeout + grace + 1 + 1.5
