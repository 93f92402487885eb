"""Security and robustness against the real daemon, over real sockets."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.claims import claim
from tests.helpers.clients import SSEClient, get, post_ping
from tests.helpers.in_memory import parse_response, request_bytes

SECRET = "an end-to-end secret that is long enough for HS256 and then some"
PINGS = 20_000
WARMUP = 2_000
# Long ids and statuses make each frame ~370 bytes, so 22,000 of them (8 MB)
# are far more than the kernel's socket buffers can hide.
BIG_USER = "u" * 200
TCP_ESTABLISHED = 1


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def post_many(port: int, userid: str, bodies: list[bytes], batch: int = 250,
              after_batch: Callable[[list[bytes]], None] = lambda chunk: None) -> None:
    """Ping ``userid`` with each body over one kept-alive connection, pipelined."""
    header = claim(userid)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for start in range(0, len(bodies), batch):
            chunk = bodies[start:start + batch]
            sock.sendall(b"".join(
                request_bytes("POST", "/ping", {"X-User-Claim": header, "Content-Type": "text/plain"}, body)
                for body in chunk))
            answers = b""
            while answers.count(b"\r\n\r\n") < len(chunk):
                data = sock.recv(65536)
                assert data, "daemon closed the pinging connection"
                answers += data
            assert answers.count(b"HTTP/1.1 200 ") == len(chunk), answers[:300]
            after_batch(chunk)


def status(n: int) -> str:
    return f"{n:06d}".ljust(64, "s")


def test_a_stalled_subscriber_keeps_memory_bounded_and_others_get_every_ping(daemon):
    last = status(WARMUP + PINGS - 1)
    stalled = SSEClient(daemon.port, f"/subscribe/{BIG_USER}", rcvbuf=4096)
    reader = SSEClient(daemon.port, f"/subscribe/{BIG_USER}")
    received: list[str] = []

    def keep_reading(chunk: list[bytes]) -> None:
        # A subscriber that keeps up: it reads each batch before the next.
        received.extend(reader.event(timeout=30)["status"] for _ in chunk)

    post_many(daemon.port, BIG_USER, [status(n).encode() for n in range(WARMUP)],
              batch=100, after_batch=keep_reading)
    before = rss_kib(daemon.proc.pid)
    post_many(daemon.port, BIG_USER, [status(n).encode() for n in range(WARMUP, WARMUP + PINGS)],
              batch=100, after_batch=keep_reading)
    growth = rss_kib(daemon.proc.pid) - before

    assert received == [status(n) for n in range(WARMUP + PINGS)]
    # Unbounded buffering would keep ~7 MB for the stalled stream alone.
    assert growth < 3 * 1024, f"daemon RSS grew {growth} KiB"

    # The stalled client, reading at last, gets what the kernel held, then
    # only the newest ping: most of the 22,000 were never queued for it.
    got = []
    while not got or got[-1] != last:
        got.append(stalled.event(timeout=10)["status"])
    assert len(got) < (WARMUP + PINGS) // 2, len(got)
    assert got == sorted(got)
    print(f"\nstalled stream: {len(got)} of {WARMUP + PINGS} events delivered; "
          f"daemon RSS grew {growth} KiB over {PINGS} pings")


def test_a_blocked_stream_is_cut_off_after_the_limit(start_daemon):
    daemon = start_daemon(env={"STREAM_BLOCKED_TIMEOUT": "1"})
    stalled = SSEClient(daemon.port, f"/subscribe/{BIG_USER}", rcvbuf=4096)
    post_many(daemon.port, BIG_USER, [status(n).encode() for n in range(PINGS)])
    # Reading would unblock it, so watch the socket's TCP state instead: the
    # daemon resets the connection once the stream has been blocked too long.
    deadline = time.monotonic() + 15
    while tcp_state(stalled.sock) == TCP_ESTABLISHED:
        assert time.monotonic() < deadline, "blocked stream still open"
        time.sleep(0.1)
    assert get(daemon.port, "/status?user=x")[0] == 200


def tcp_state(sock: socket.socket) -> int:
    """The kernel's state of ``sock`` (first byte of ``struct tcp_info``)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def test_slow_request_headers_get_408(start_daemon):
    daemon = start_daemon(env={"REQUEST_TIMEOUT": "1"})
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        sock.sendall(b"GET /subscribe/alice HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        while data := sock.recv(4096):
            answer += data
    response = parse_response(answer)
    assert response.status == 408 and json.loads(response.body)["error"]


def test_oversized_headers_get_431_over_a_real_socket(start_daemon):
    daemon = start_daemon(env={"MAX_HEADER_BYTES": "4096"})
    status_code, headers, body = get(daemon.port, "/status?user=a", {"X-Filler": "f" * 8000})
    assert status_code == 431 and json.loads(body)["error"]


def test_jwt_mode_end_to_end(start_daemon):
    daemon = start_daemon(env={"JWT_SECRET": SECRET})
    token = jwt.encode({"userid": "alice", "clientid": "c1"}, SECRET, algorithm="HS256")
    stream = SSEClient(daemon.port, f"/subscribe/alice?token={token}")
    assert stream.status == 200
    assert post_ping(daemon.port, "1", userid="mallory")[0] == 401
    assert post_ping(daemon.port, "1", userid=None, headers={"Authorization": f"Bearer {token}"})[0] == 200
    assert stream.event()["userid"] == "alice"
    assert SSEClient(daemon.port, "/subscribe/alice").status == 401
    assert "X-User-Claim is ignored" in daemon.output()


def test_proxy_mode_warns_at_start(daemon):
    assert "only be reachable through that proxy" in daemon.output()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory):
    from tests.helpers.processes import Daemon

    daemon = Daemon(tmp_path_factory.mktemp("hostile")).start()
    yield daemon
    daemon.stop()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=600), claim=st.binary(max_size=100).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), query=st.binary(max_size=50))
def test_hostile_requests_against_the_daemon(shared_daemon, body, claim, query):
    """A few of the in-process properties again, through real sockets."""
    path = b"/ping?" + query.hex().encode()
    with socket.create_connection(("127.0.0.1", shared_daemon.port), timeout=10) as sock:
        sock.sendall(request_bytes("POST", path, {"X-User-Claim": claim, "Connection": "close"}, body))
        answer = b""
        while data := sock.recv(65536):
            answer += data
    response = parse_response(answer)
    assert response is not None and response.complete, answer
    assert response.status in (200, 400, 413), answer
