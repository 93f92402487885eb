"""``LISTEN=ssl:…`` on the real daemon, with a self-signed certificate made as the README says.

Every client here offers ALPN (``h2``, ``http/1.1``) the way curl and browsers
do, and checks the certificate and its name.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time

from tests.helpers.claims import claim_header
from tests.helpers.clients import SSEClient, health
from tests.helpers.waiting import wait_for

CLAIM = claim_header("alice")


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


def test_pings_over_one_kept_alive_tls_connection_even_a_body_sent_late(start_tls_daemon, tls_trust):
    daemon = start_tls_daemon()
    conn = https(daemon.port, tls_trust)
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


def test_a_tls_stream_delivers_and_is_uncounted_once_its_client_leaves(start_tls_daemon, tls_trust):
    daemon = start_tls_daemon()
    stream = SSEClient(daemon.port, "/subscribe/alice", tls=tls_trust)
    assert stream.status == 200 and stream.headers["content-type"] == "text/event-stream"
    conn = https(daemon.port, tls_trust)
    assert ask(conn, "POST", "/ping", b"away", {**CLAIM, "Content-Type": "text/plain"})[0] == 200
    assert stream.event()["status"] == "away"
    assert health(daemon.port, tls_trust)["streams"] == 1
    stream.close()
    wait_for(lambda: health(daemon.port, tls_trust)["streams"] == 0)
    conn.close()


def test_an_http_1_0_client_offering_only_http_1_0_by_alpn_is_served(start_tls_daemon,
                                                                        tls_certificate):
    # As `curl --http1.0 https://…` does: ALPN "http/1.0" alone. With no protocol in
    # common the handshake was aborted (SPEC §5: HTTP/1.0, over TLS too).
    daemon = start_tls_daemon()
    context = ssl.create_default_context(cafile=str(tls_certificate[1]))
    context.set_alpn_protocols(["http/1.0"])
    with context.wrap_socket(socket.create_connection(("localhost", daemon.port), timeout=10),
                             server_hostname="localhost") as sock:
        assert sock.selected_alpn_protocol() in ("http/1.0", None)
        sock.sendall(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
