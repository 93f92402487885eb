"""Real parts for end-to-end tests: the daemon, redis-server, an SSE reader."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

TWISTD = str(Path(sys.executable).with_name("twistd"))
# The daemon runs this checkout's code (its heartbeat/ and twisted/plugins/),
# the same code the unit tests import.
REPO = Path(__file__).resolve().parent.parent


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Run in each child: killed when the test run is, however it ends.

    A pytest killed mid-run (a timeout, ^C twice) never reaches fixture
    teardown; without this its daemons and redis-servers would live on.
    """
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 15,
                  host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


def need_binary(name: str) -> str:
    """The binary's path; skip when missing, except under CI where it must exist."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required under CI but was not found")
        pytest.skip(f"{name} not installed")
    return path


class Daemon:
    """``twistd -n heartbeat`` as a user runs it, on a free loopback port."""

    def __init__(self, cwd: Path, args: list[str] = (), env: Mapping[str, str] | None = None,
                 port: int | None = None, listen: str | None = None,
                 host: str = "127.0.0.1") -> None:
        self.port = port or free_port()
        # ``listen``: another LISTEN on ``port`` (ssl:, tcp6:), reached at ``host``.
        self.listen = listen or f"tcp:{self.port}:interface=127.0.0.1"
        self.host = host
        self.cwd = cwd
        self.args = list(args)
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.log = cwd / f"heartbeat-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [TWISTD, "-n", "--pidfile=", "heartbeat",
                "--listen", self.listen, *self.args]

    def start(self, healthy: bool = True, **popen) -> Daemon:
        """Spawn ``command()`` and wait until it listens and, if ``healthy``, serves.

        Listening comes before the store connects (Redis mode), so a test
        that pings right away waits for ``/health`` to say 200 first.
        ``popen`` adds Popen arguments (e.g. ``pass_fds``).
        """
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.cwd, env=self.environment(),
                                         stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent, **popen)
        wait_for_port(self.port, self.proc, host=self.host)
        if healthy:
            self.wait_healthy()
        return self

    def environment(self) -> dict[str, str]:
        """Ours without heartbeat's settings, then this daemon's: nothing leaks in."""
        env = {k: v for k, v in os.environ.items() if k not in _SETTINGS_ENV}
        env["PYTHONPATH"] = str(REPO)
        env.update(self.env)
        return env

    def wait_healthy(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while get(self.port, "/health")[0] != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"daemon on {self.port} not healthy after {timeout}s")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace")


_SETTINGS_ENV = {"LISTEN", "REDIS", "DATABASE", "REDIS_PREFIX", "REDIS_CA_FILE", "REDIS_WAIT_REPLICAS",
                 "KEEPALIVE", "PRESENCE_TIMEOUT", "HIDDEN_STATUSES", "JWT_SECRET",
                 "CORS_ORIGINS", "MAX_USERS_PER_STREAM", "BACKLOG", "WORKERS",
                 "MAX_STREAMS", "MAX_HEADER_BYTES", "MAX_USERID_LENGTH", "REQUEST_TIMEOUT",
                 "STREAM_BLOCKED_TIMEOUT", "LOG_FORMAT", "MAX_DEVICES_PER_USER"}


class RedisServer:
    """A private redis-server on a free port, never the machine's own 6379."""

    def __init__(self, directory: Path, port: int | None = None,
                 password: str | None = None, args: list[str] = (),
                 cli_args: list[str] = ()) -> None:
        self.binary = need_binary("redis-server")
        self.port = port or free_port()
        self.directory = directory
        self.password = password
        # ``args``: more redis-server options (TLS, ACL users, replicaof);
        # ``cli_args``: what redis-cli then needs to reach it (--tls, --user).
        self.args = list(args)
        self.cli_args = list(cli_args)
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory),
             *(["--requirepass", self.password] if self.password else []), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        wait_for_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def command(self, *args: str) -> bytes:
        """One command via redis-cli, for checks from outside the daemon."""
        cli = need_binary("redis-cli")
        auth = ["--no-auth-warning", "-a", self.password] if self.password else []
        return subprocess.run([cli, "-p", str(self.port), *self.cli_args, *auth, *args], check=True,
                              capture_output=True).stdout


class SSEClient:
    """A raw-socket EventSource reader: sees exactly the bytes the server sends."""

    def __init__(self, port: int, path: str, headers: Mapping[str, str] | None = None,
                 rcvbuf: int | None = None, tls: ssl.SSLContext | None = None) -> None:
        # ``rcvbuf`` (set before connecting, so the window stays small) makes
        # a client that stops reading block the server quickly.
        sock = socket.socket()
        sock.settimeout(10)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(("127.0.0.1", port))
        # ``tls``: over TLS to "localhost", as a client checking the name would.
        self.sock = sock if tls is None else tls.wrap_socket(sock, server_hostname="localhost")
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n"
                          f"Accept: text/event-stream\r\n{extra}\r\n".encode())
        self.buffer = b""
        head = self._read_until(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.lower(): v.strip() for k, v in
                        (line.split(":", 1) for line in header_lines if line)}
        self.chunked = self.headers.get("transfer-encoding") == "chunked"
        self.body = b""

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buffer += data
        head, self.buffer = self.buffer.split(marker, 1)
        return head

    def _fill_body(self) -> bool:
        """Move one more piece of the body into ``self.body``; False at its end."""
        if not self.chunked:
            if not self.buffer:
                data = self.sock.recv(65536)
                if not data:
                    return False
                self.buffer = data
            self.body += self.buffer
            self.buffer = b""
            return True
        size = int(self._read_until(b"\r\n").split(b";")[0], 16)
        if size == 0:
            return False
        while len(self.buffer) < size + 2:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed mid-chunk")
            self.buffer += data
        self.body += self.buffer[:size]
        self.buffer = self.buffer[size + 2:]
        return True

    def frame(self, timeout: float = 5) -> bytes:
        """The next raw frame: a comment or ``retry:`` line alone (heartbeat
        sends those with no blank line after them), else up to and
        including the blank line that ends an event."""
        self.sock.settimeout(timeout)
        while True:
            if self.body.startswith((b":", b"retry:")) and b"\n" in self.body:
                line, self.body = self.body.split(b"\n", 1)
                return line + b"\n"
            if b"\n\n" in self.body:
                frame, self.body = self.body.split(b"\n\n", 1)
                return frame + b"\n\n"
            if not self._fill_body():
                raise ConnectionError("stream ended")

    def event(self, timeout: float = 5) -> dict:
        """The next event's data as JSON, skipping comments and field-only frames."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.frame(max(0.01, deadline - time.monotonic()))
            data = [line[5:].lstrip(b" ") for line in frame.split(b"\n")
                    if line.startswith(b"data:")]
            if data:
                return json.loads(b"\n".join(data))

    def no_event(self, wait: float = 0.5) -> None:
        """Assert that no event arrives within ``wait`` seconds."""
        try:
            event = self.event(wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected event {event}")

    def ended(self, timeout: float = 5) -> bool:
        """Whether the response ends cleanly (its last chunk) within ``timeout``.

        False when the connection drops mid-response instead; a timeout raises.
        """
        self.sock.settimeout(timeout)
        try:
            while self._fill_body():
                pass
        except ConnectionError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()


def post_ping(port: int, body: bytes | str, userid: str | None = "alice",
              content_type: str | None = None, headers: Mapping[str, str] | None = None,
              path: str = "/ping") -> tuple[int, dict[str, str], bytes]:
    """POST a ping over a fresh connection; (status, headers, body)."""
    import http.client

    if isinstance(body, str):
        body = body.encode()
    all_headers = dict(headers or {})
    if userid is not None:
        all_headers.setdefault("X-User-Claim", json.dumps({"userid": userid, "clientid": "c1"}))
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=all_headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def get(port: int, path: str, headers: Mapping[str, str] | None = None,
        method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()
