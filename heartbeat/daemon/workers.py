"""``WORKERS``: more processes serving the one listening socket.

A Twisted process uses one core. With ``WORKERS=N`` the process twistd
started (the primary) listens as usual, serves too, and runs N-1 worker
processes that inherit its listening socket as fd 3 and accept from the same
queue: no port juggling, and it works for every ``LISTEN`` form, systemd
socket activation included. Each worker is a whole heartbeat with its own
Redis connections, which is why more than one needs ``REDIS``: a ping taken
by one process reaches the streams of every other through Redis pub/sub.

A worker that dies is started again; stopping the primary stops them all.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import tcp
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.usage import UsageError

log = Logger()

# The fd a worker finds the shared listening socket on.
WORKER_FD = 3
# The endpoint type the plugin registers for an inherited socket.
ENDPOINT_PREFIX = "heartbeat-fd"
# Seconds before a dead worker is started again (no tight crash loops), and
# before a worker that ignores SIGTERM is killed.
RESTART_DELAY = 1.0
KILL_AFTER = 5.0

_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def inherited_endpoint(reactor: Any, fd: str, domain: str = "INET") -> AdoptedStreamServerEndpoint:
    """The endpoint for ``heartbeat-fd:<fd>:domain=<INET|INET6|UNIX>``."""
    family = getattr(socket, f"AF_{domain}", None)
    if family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        raise ValueError(f"unknown domain {domain!r}")
    return AdoptedStreamServerEndpoint(reactor, int(fd), family)


def reuseport_sockets(description: str, count: int) -> list[socket.socket] | None:
    """``count`` listening sockets on one TCP address, each with ``SO_REUSEPORT``.

    Sharing one socket leaves the kernel to wake every process on each
    connection and the quickest to take them all, so one process can end up
    with a whole burst while the others idle. With a socket each, the
    kernel spreads connections evenly by their addresses. Only for plain
    ``tcp:``/``tcp6:`` descriptions (None otherwise: other endpoints share
    the primary's socket instead).
    """
    kind, *fields = [part.replace("\\:", ":") for part in re.split(r"(?<!\\):", description)]
    if kind not in ("tcp", "tcp6") or not fields:
        return None
    options = dict(field.split("=", 1) for field in fields[1:] if "=" in field)
    if set(options) - {"interface", "backlog"} or len(options) != len(fields) - 1:
        return None
    interface = options.get("interface", "::" if kind == "tcp6" else "0.0.0.0")
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    port, backlog = int(fields[0]), int(options.get("backlog", "50"))
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((interface, port))
            port = sock.getsockname()[1]  # port 0: the others join the one it got
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError as e:
        for sock in sockets:
            sock.close()
        raise UsageError(f"bad setting LISTEN: cannot listen on {interface}:{port}: {e}") from None
    return sockets


def worker_command(options: Mapping[str, str | None], family: int) -> list[str]:
    """How a worker is run: twistd with the primary's own options, one process.

    Settings from the environment and ``.env`` reach it by inheritance; only
    ``LISTEN`` (the inherited socket instead) and ``WORKERS`` differ.
    """
    domain = socket.AddressFamily(family).name.removeprefix("AF_")
    args = [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "heartbeat"]
    for name, value in options.items():
        if value is not None and name not in ("listen", "workers"):
            args.append(f"--{name}={value}")
    args += [f"--listen={ENDPOINT_PREFIX}:{WORKER_FD}:domain={domain}", "--workers=1"]
    return args


class _Worker(ProcessProtocol):
    def __init__(self, number: int, ended: Callable[[_Worker, Failure], None]) -> None:
        self.number = number
        self._ended = ended
        self.done: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.done.callback(None)
        self._ended(self, reason)


class WorkerPool(Service):
    """Runs ``count`` workers on the primary's listening socket, once it listens."""

    def __init__(
        self,
        reactor: Any,
        count: int,
        options: Mapping[str, str | None],
        listening: Callable[[], Deferred[IListeningPort]],
        sockets: Sequence[socket.socket] = (),
        drain_seconds: float = 0.0,
    ) -> None:
        self._reactor = reactor
        # A stopping worker drains (DRAIN_SECONDS) before its own 5 s stop.
        self._kill_after = KILL_AFTER + drain_seconds
        self._count = count
        self._options = options
        self._listening = listening
        # Each worker's own socket (SO_REUSEPORT), or none: they share the
        # primary's once it listens.
        self._own = list(sockets)
        self._shared: socket.socket | None = None
        self._workers: dict[int, tuple[_Worker, object]] = {}

    def startService(self) -> None:
        super().startService()
        self._listening().addCallback(self._start_all)

    def _start_all(self, port: IListeningPort) -> None:
        if not self._own:
            # Every LISTEN form listens on a tcp.Port (unix: and ssl: ones are too).
            assert isinstance(port, tcp.Port), port
            self._shared = port.socket
        for number in range(1, self._count + 1):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        listening = self._own[number - 1] if self._own else self._shared
        if not self.running or listening is None:
            return
        fd = listening.fileno()
        command = worker_command(self._options, listening.family)
        # Readiness is the primary's to report; a worker's would be noise.
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        worker = _Worker(number, self._ended)
        process = self._reactor.spawnProcess(
            worker, command[0], command, env=env,
            childFDs={0: 0, 1: 1, 2: 2, WORKER_FD: fd},
        )
        self._workers[number] = (worker, process)
        log.info("worker {number} started, pid {pid}", number=number, pid=process.pid)

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        self._workers.pop(worker.number, None)
        if not self.running:
            return
        if not reason.check(ProcessDone):
            log.warn("worker {number} ended ({why}); starting it again",
                     number=worker.number, why=reason.getErrorMessage())
        self._reactor.callLater(RESTART_DELAY, self._spawn, worker.number)

    def stopService(self) -> Deferred[object]:
        """SIGTERM every worker (each stops as gracefully as the primary), then wait."""
        super().stopService()
        waits = []
        for worker, process in list(self._workers.values()):
            _signal(process, "TERM")
            kill = self._reactor.callLater(self._kill_after, _signal, process, "KILL")
            worker.done.addCallback(_cancel, kill)
            waits.append(worker.done)
        return DeferredList(waits).addCallback(self._close_sockets)

    def _close_sockets(self, result: object) -> object:
        for sock in self._own:
            sock.close()
        return result


def _cancel(result: None, call: IDelayedCall) -> None:
    if call.active():
        call.cancel()


def _signal(process: Any, name: str) -> None:
    try:
        process.signalProcess(name)
    except ProcessExitedAlready:
        pass
