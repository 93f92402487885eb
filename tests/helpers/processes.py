"""Real processes for end-to-end tests: the daemon and redis-server, on free loopback ports."""

from __future__ import annotations

import ctypes
import itertools
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from heartbeat.daemon.config import SETTINGS
from tests.helpers.clients import get
from tests.helpers.waiting import wait_for

TWISTD = str(Path(sys.executable).with_name("twistd"))
# The daemon runs this checkout's code (its heartbeat/ and twisted/plugins/),
# the same code the unit tests import.
REPO = Path(__file__).resolve().parents[2]


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Run in each child: killed when the test run is, however it ends.

    A pytest killed mid-run (a timeout, ^C twice) never reaches fixture
    teardown; without this its daemons and redis-servers would live on.
    """
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# Where the workers' blocks of ports start (below the kernel's ephemeral range).
_FIRST_PORT = 10000


def _worker_ports() -> Iterator[int] | None:
    """Under pytest-xdist, this worker's own block of ports below the kernel's
    ephemeral range, taken in turn from a random one (another run's worker of
    the same number is elsewhere in it); None in a run of one process."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return None
    count = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    block = (low - _FIRST_PORT) // count
    start = _FIRST_PORT + int(worker.removeprefix("gw")) * block
    first = random.randrange(block)
    return itertools.cycle([*range(start + first, start + block), *range(start, start + first)])


_PORTS = _worker_ports()


def free_port() -> int:
    """A loopback port nothing uses now, for a server a test is about to start.

    The kernel's pick (``bind`` to port 0) is random over its ephemeral range,
    so with several workers another worker could be handed the same port
    before this one's server binds it: under pytest-xdist each worker takes
    the ports of its own block instead, skipping any in use.
    """
    if _PORTS is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    return next(port for port in _PORTS if _unused(port))


def _unused(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


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


def room_for_streams(n: int) -> int:
    """Raise our open-file limit (a daemon inherits it); how many of ``n`` streams fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 200
    if soft < want and (hard == resource.RLIM_INFINITY or hard >= want):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return min(n, soft - 200)


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
                                         preexec_fn=die_with_parent, **popen)
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
        wait_for(lambda: get(self.port, "/health")[0] == 200, timeout)

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


# Every setting heartbeat reads from the environment, none of which a test inherits.
_SETTINGS_ENV = frozenset(setting.name for setting in SETTINGS)


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
            preexec_fn=die_with_parent,
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
