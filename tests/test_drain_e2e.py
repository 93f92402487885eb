"""DRAIN_SECONDS against the real daemon: /readyz turns 503 at once, pings are
still served, the streams' ends are spread over the window, the exit is on time."""

from __future__ import annotations

import selectors
import signal
import threading
import time

from tests.helpers.clients import SSEClient, get, post_ping
from tests.helpers.processes import Daemon, room_for_streams
from tests.helpers.waiting import wait_for

STREAMS = 1000
DRAIN = 3


def _ends(streams: list[SSEClient], since: float, timeout: float) -> list[float]:
    """Seconds after ``since`` at which the server closed each stream; each
    must have ended cleanly (its last chunk), told when to come back first."""
    tails = {stream.sock: stream.buffer for stream in streams}
    ends: list[float] = []
    with selectors.DefaultSelector() as selector:
        for stream in streams:
            stream.sock.setblocking(False)
            selector.register(stream.sock, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while len(ends) < len(streams) and time.monotonic() < deadline:
            for key, _ in selector.select(0.2):
                data = key.fileobj.recv(65536)
                tails[key.fileobj] = (tails[key.fileobj] + data)[-64:]
                if not data:
                    ends.append(time.monotonic() - since)
                    selector.unregister(key.fileobj)
    assert len(ends) == len(streams), f"{len(streams) - len(ends)} streams never ended"
    assert all(tail.endswith(b"0\r\n\r\n") and b"retry: " in tail for tail in tails.values())
    return ends


def test_sigterm_drains_over_drain_seconds(start_daemon):
    n = room_for_streams(STREAMS)
    assert n >= STREAMS, "the open-file limit leaves too little room for the test"
    daemon: Daemon = start_daemon(env={"DRAIN_SECONDS": str(DRAIN)})
    # Ready once the store has read what it keeps, maybe a moment after /health answers.
    wait_for(lambda: get(daemon.port, "/readyz")[0] == 200, 10)
    streams = [SSEClient(daemon.port, f"/subscribe/u{i % 200}") for i in range(n)]
    pings: list[tuple[float, int]] = []
    stop_pinging = threading.Event()
    try:
        signalled = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        while get(daemon.port, "/readyz")[0] != 503:
            assert time.monotonic() - signalled < 2
        not_ready_after = time.monotonic() - signalled
        assert get(daemon.port, "/livez")[0] == 200

        def keep_pinging() -> None:
            while not stop_pinging.is_set() and time.monotonic() - signalled < DRAIN - 0.5:
                pings.append((time.monotonic() - signalled, post_ping(daemon.port, "0")[0]))
                time.sleep(0.2)

        pinger = threading.Thread(target=keep_pinging)
        pinger.start()
        ends = _ends(streams, signalled, timeout=DRAIN + 10)
        stop_pinging.set()
        pinger.join()
        assert daemon.proc.wait(DRAIN + 10) == -signal.SIGTERM
        exited_after = time.monotonic() - signalled
    finally:
        stop_pinging.set()
        for stream in streams:
            stream.close()
    per_second = [sum(1 for t in ends if k <= t < k + 1) for k in range(int(max(ends)) + 1)]
    print(f"/readyz 503 after {not_ready_after:.3f}s; stream ends per second {per_second}; "
          f"pings {len(pings)}; exit after {exited_after:.2f}s")
    assert not_ready_after < 0.2
    assert pings and all(code == 200 for _, code in pings) and pings[-1][0] > DRAIN / 2
    # Even over the window: a third each second, give or take one tick's worth
    # (a tenth of a second's share) where the server's ticks and the seconds
    # counted here fall apart. Ending them together would put them all in one.
    assert max(per_second) <= n / DRAIN * 1.1, per_second
    assert max(ends) < DRAIN + 1
    assert exited_after < DRAIN + 5
    assert "Traceback" not in daemon.output()
