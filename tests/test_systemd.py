"""The notify protocol against a real unix datagram socket, and when READY is sent."""

from __future__ import annotations

import os
import socket

import pytest
from twisted.internet.task import Clock

from heartbeat.daemon import systemd
from heartbeat.store.memory import MemoryStore
from tests.helpers.in_memory import MemoryServer


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A bound datagram socket standing in for systemd; NOTIFY_SOCKET points at it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def received(sock: socket.socket) -> list[bytes]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096))
        except BlockingIOError:
            return messages


def test_notify_sends_one_datagram(notify_socket):
    assert systemd.notify("READY=1\nSTATUS=serving")
    assert received(notify_socket) == [b"READY=1\nSTATUS=serving"]


def test_notify_to_an_abstract_socket():
    name = f"heartbeat-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert systemd.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"


def test_notify_does_nothing_outside_systemd():
    assert not systemd.notify("READY=1", {})


def test_notify_survives_a_missing_socket(tmp_path):
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})


def test_store_ready_waits_for_the_store():
    clock = Clock()
    store = MemoryStore(clock, 60)
    store.available = False
    ready = systemd.store_ready(store, clock)
    clock.advance(5)
    assert not ready.called
    store.available = True
    clock.advance(1)
    assert ready.called
    assert not clock.getDelayedCalls()


def test_ready_once_listening_and_store_available_then_stopping(notify_socket):
    server = MemoryServer()
    server.store.available = False
    server.service.startService()
    assert received(notify_socket) == []
    server.store.available = True
    server.clock.advance(1)
    assert received(notify_socket) == [b"READY=1\nSTATUS=serving"]
    server.service.stopService()
    assert received(notify_socket) == [b"STOPPING=1"]


def test_stopping_before_ready_never_says_ready(notify_socket):
    server = MemoryServer()
    server.store.available = False
    server.service.startService()
    server.service.stopService()
    server.store.available = True
    server.clock.advance(1)
    assert received(notify_socket) == [b"STOPPING=1"]
