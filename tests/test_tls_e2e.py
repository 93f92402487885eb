"""``LISTEN=ssl:…`` on the real daemon, with a self-signed certificate made as the README says.

Every client here offers ALPN (``h2``, ``http/1.1``) the way curl and browsers
do, and checks the certificate and its name.
"""

from __future__ import annotations

import http.client
import json
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Daemon, SSEClient, free_port, need_binary
from tests.test_redis_e2e import eventually

CLAIM = {"X-User-Claim": json.dumps({"userid": "alice", "clientid": "c1"})}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(key.pem, cert.pem), from the README's openssl command."""
    openssl = need_binary("openssl")
    directory = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem",
         "-out", "cert.pem", "-days", "365", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        cwd=directory, check=True, capture_output=True,
    )
    return directory / "key.pem", directory / "cert.pem"


@pytest.fixture
def trust(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificate[1]))
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def https(port: int, trust: ssl.SSLContext) -> http.client.HTTPSConnection:
    """A keep-alive connection to "localhost" (the certificate's name) on ``port``."""
    conn = http.client.HTTPSConnection("localhost", port, context=trust, timeout=10)
    conn.connect()
    return conn


def ask(conn: http.client.HTTPSConnection, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.read()


def health(port: int, trust: ssl.SSLContext) -> dict:
    conn = https(port, trust)
    try:
        status, body = ask(conn, "GET", "/health")
        assert status == 200
        return json.loads(body)
    finally:
        conn.close()


@pytest.fixture
def start_tls(start_daemon, certificate, trust) -> Iterator:
    def start(args: list[str] = ()) -> Daemon:
        key, cert = certificate
        port = free_port()
        daemon = start_daemon(args, port=port, healthy=False,
                              listen=f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}")
        eventually(lambda: health(port, trust)["status"] == "ok")
        return daemon

    return start


def test_pings_over_one_kept_alive_tls_connection_even_a_body_sent_late(start_tls, trust):
    daemon = start_tls()
    conn = https(daemon.port, trust)
    # The handshake offered h2 too; Twisted 26 answers http/1.1, older ones nothing.
    assert conn.sock.selected_alpn_protocol() in ("http/1.1", None)
    assert ask(conn, "POST", "/ping", b"1", {**CLAIM, "Content-Type": "text/plain"}) == (200, b"")
    first = conn.sock
    # The second request on the same connection, its body in a later TLS record.
    conn.putrequest("POST", "/ping")
    for name, value in {**CLAIM, "Content-Type": "text/plain", "Content-Length": "1"}.items():
        conn.putheader(name, value)
    conn.endheaders()
    time.sleep(0.2)
    conn.send(b"7")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"")
    status, body = ask(conn, "GET", "/status?user=alice")
    assert status == 200 and json.loads(body)["alice"]["status"] == "7"
    assert conn.sock is first
    conn.close()


def test_a_tls_stream_delivers_and_is_uncounted_once_its_client_leaves(start_tls, trust):
    daemon = start_tls()
    stream = SSEClient(daemon.port, "/subscribe/alice", tls=trust)
    assert stream.status == 200 and stream.headers["content-type"] == "text/event-stream"
    conn = https(daemon.port, trust)
    assert ask(conn, "POST", "/ping", b"away", {**CLAIM, "Content-Type": "text/plain"})[0] == 200
    assert stream.event()["status"] == "away"
    assert health(daemon.port, trust)["streams"] == 1
    stream.close()
    eventually(lambda: health(daemon.port, trust)["streams"] == 0)
    conn.close()


def test_sigterm_with_open_tls_streams_exits_within_5s(start_tls, trust):
    daemon = start_tls()
    streams = [SSEClient(daemon.port, f"/subscribe/u{i}", tls=trust) for i in range(50)]
    assert health(daemon.port, trust)["streams"] == 50
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == -signal.SIGTERM
    took = time.monotonic() - started
    # These clients never answer the server's close_notify, so the drain waits
    # its full DRAIN_TIMEOUT (3 s) for them before dropping the connections.
    print(f"stopped with 50 TLS streams open in {took:.2f}s")
    assert took < 5
    # Each stream still ended with its terminating chunk.
    assert all(stream.ended() for stream in streams)
    for stream in streams:
        stream.close()
    assert "heartbeat stopped" in daemon.output()
    assert "Traceback" not in daemon.output()
