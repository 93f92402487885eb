"""Contract tests: what heartbeat relies on in Twisted, failing loudly when a release changes it.

Each private name heartbeat uses (all in ``heartbeat/twisted_internals.py``)
and the channel methods twisted.web's ``Request`` calls (which
``heartbeat/web/handoff.py`` implements) are pinned here, so a Twisted
upgrade that moves them fails these tests, not production.
"""

from __future__ import annotations

import inspect
import re
import socket
from pathlib import Path

import pytest_twisted
from twisted.internet import abstract, endpoints, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.web import http, server

from heartbeat.twisted_internals import endpoint_types, listening_socket
from heartbeat.web.handoff import SiteChannel


def test_the_write_buffer_names_eager_write_reads_exist():
    assert issubclass(tcp.Connection, abstract.FileDescriptor)
    descriptor = abstract.FileDescriptor()
    assert descriptor._tempDataBuffer == [] and descriptor.offset == 0
    assert descriptor.dataBuffer == b""
    assert "_tempDataBuffer" in inspect.getsource(abstract.FileDescriptor.write)
    assert callable(tcp.Connection.writeSomeData)


def test_the_accept_internals_accepting_port_uses_exist():
    sock = socket.socket()
    try:
        assert callable(sock._accept)  # type: ignore[attr-defined]
    finally:
        sock.close()
    port = tcp.Port(0, None)
    assert port.sessionno == 0 and port.transport is tcp.Server
    assert port._buildAddr(("127.0.0.1", 1)) == IPv4Address("TCP", "127.0.0.1", 1)
    assert "numberAccepts" in inspect.getsource(tcp.Port.doRead)
    # What the port does when no descriptor is left.
    assert port.reactor is not None and port.factory is None and not port.connected
    assert callable(tcp.Port.stopReading) and callable(tcp.Port.startReading)
    assert "reason" in inspect.signature(tcp.Port.connectionLost).parameters


@pytest_twisted.ensureDeferred
async def test_a_listening_tcp_port_holds_its_socket_where_listening_socket_reads_it():
    from twisted.internet import reactor

    port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    try:
        sock = listening_socket(port)
        assert isinstance(sock, socket.socket)
        assert sock.getsockname()[1] == port.getHost().port
    finally:
        await port.stopListening()
    assert listening_socket(object()) is None  # type: ignore[arg-type]


def test_the_endpoint_parser_table_exists():
    assert {"tcp", "ssl", "unix"} <= set(endpoints._serverParsers)
    assert {"tcp", "tcp6", "ssl", "unix", "systemd", "heartbeat-fd"} <= endpoint_types()


class _Recorder:
    """A channel that records every attribute a Request asks of it."""

    def __init__(self) -> None:
        self.asked: set[str] = set()
        self.site = server.Site(_Ok())
        self.requestFactory = server.Request
        self.factory = None
        self.transport = None

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        self.asked.add(name)
        if name in ("getPeer", "getHost"):
            return lambda: IPv4Address("TCP", "127.0.0.1", 1)
        return lambda *args, **kwargs: False


class _Ok:
    isLeaf = True

    def render(self, request):  # type: ignore[no-untyped-def]
        request.write(b"ok")
        request.finish()
        return server.NOT_DONE_YET

    def getChildWithDefault(self, name, request):  # type: ignore[no-untyped-def]
        return self

    def putChild(self, path, child):  # type: ignore[no-untyped-def]
        pass


def test_a_request_asks_its_channel_only_for_what_site_channel_has():
    from io import BytesIO

    channel = _Recorder()
    request = server.Request(channel)
    request.content = BytesIO()
    request.requestReceived(b"GET", b"/x?y=1", b"HTTP/1.1")
    request.isSecure()
    assert request.finished
    provided = {name for name in dir(SiteChannel) if not name.startswith("__")}
    assert channel.asked <= provided | {"transport", "site", "factory"}, channel.asked - provided
    assert {"writeHeaders", "requestDone", "getPeer", "getHost"} <= channel.asked


def test_no_body_codes_are_where_handoff_reads_them():
    assert 204 in http.NO_BODY_CODES and 304 in http.NO_BODY_CODES


def test_ci_tests_the_twisted_floor_pyproject_states():
    """The lower bound is only true while .ci/run's second run installs exactly it."""
    repo = Path(__file__).resolve().parent.parent
    floor = re.search(r'"twisted\[tls\]>=([\d.]+),', (repo / "pyproject.toml").read_text())
    pinned = re.search(r"^twisted==([\d.]+)$", (repo / ".ci" / "floor-constraints.txt").read_text(),
                       re.MULTILINE)
    assert floor and pinned
    assert pinned[1] in (floor[1], floor[1] + ".0")
