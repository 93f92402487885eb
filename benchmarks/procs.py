"""Servers under test and the private Redis: starting, readiness, /proc figures, stopping.

Every process is started here and recorded, so that `stop_all` (called from a `finally`
and on SIGTERM) ends exactly the processes this run started — by PID, never by name.
"""

from __future__ import annotations

import ipaddress
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
NCHAN_TEMPLATE = HERE / "nchan.conf"  # a copy of the reference peer's template
CLK_TCK = os.sysconf("SC_CLK_TCK")
STARTED: list[subprocess.Popen] = []

# Settings heartbeat reads from the environment: a developer's shell must not change what
# is measured, so they are removed and each target passes its own options.
HEARTBEAT_ENV = (
    "LISTEN", "REDIS", "REDIS_PREFIX", "DATABASE", "KEEPALIVE", "JWT_SECRET", "CORS_ORIGINS",
    "MAX_USERS_PER_STREAM", "BACKLOG", "WORKERS", "MAX_STREAMS", "MAX_HEADER_BYTES",
    "MAX_USERID_LENGTH", "REQUEST_TIMEOUT", "STREAM_BLOCKED_TIMEOUT", "LOG_FORMAT",
    "PRESENCE_TIMEOUT", "HIDDEN_STATUSES", "REDIS_CA_FILE", "REDIS_WAIT_REPLICAS",
    "API_KEY", "DRAIN_SECONDS", "DEVICE_RETENTION", "MAX_DEVICES_PER_USER",
)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_loopback(host: str) -> None:
    """Refuse any address off this machine: the benchmark only ever loads loopback."""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"refusing non-loopback target host {host!r}")


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (nginx master + workers, heartbeat + its workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """user+sys CPU of the processes, from /proc/PID/stat (fields utime, stime)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_kib(pids: list[int]) -> int:
    """Sum of VmRSS over the processes, KiB."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        total += int(m.group(1)) if m else 0
    return total


def machine_busy_seconds() -> float:
    """user+nice+system CPU of the whole machine (all cores), from /proc/stat.

    Interrupt and softirq time is left out: loopback TCP is processed there, on behalf of
    our own processes, without being charged to them.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:4]]
    return sum(fields) / CLK_TCK


def listen_drops() -> int:
    """The kernel's count of SYNs dropped at a full accept queue (TcpExt ListenDrops)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split())).get("ListenDrops", 0))
    return 0


def spawn(argv: list[str], logfile: Path, **kw) -> subprocess.Popen:
    out = open(logfile, "ab")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
    out.close()
    STARTED.append(proc)
    return proc


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the root, then SIGKILL whatever of its tree is left after `timeout`."""
    if proc.poll() is not None:
        return
    members = tree(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"pid {proc.pid} ignored SIGTERM for {timeout}s; killing it")
    for pid in members:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def forget(proc: subprocess.Popen) -> None:
    """Stop `proc` and drop it from the processes `stop_all` will end."""
    stop(proc)
    if proc in STARTED:
        STARTED.remove(proc)


def open_files_limit() -> int:
    """The open-files limit this run's processes (servers, load client) inherit."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def stop_all() -> None:
    while STARTED:
        stop(STARTED.pop())


@dataclass
class Target:
    """A server under test: what its requests look like, where it is, its processes."""

    name: str
    style: str  # "heartbeat" or "nchan": request shapes, see sseload.c and ping.lua
    host: str
    port: int
    proc: subprocess.Popen | None = None  # None: started elsewhere (--external), not ours to stop
    pid: int = 0  # the server's root process, for CPU and RSS
    notes: dict = field(default_factory=dict)
    # the most client connections the server can hold (its fd limit, nginx's
    # worker_connections, heartbeat's --max-streams); None: unknown (--external)
    max_conns: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def pids(self) -> list[int]:
        return tree(self.proc.pid if self.proc else self.pid)


class Redis:
    """A private redis-server on a free port (never 6379), no persistence."""

    def __init__(self, scratch: Path):
        self.port = free_port()
        d = scratch / "redis"
        d.mkdir()
        self.proc = spawn(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(d), "--daemonize", "no"],
            d / "redis.log",
        )
        deadline = time.monotonic() + 10
        while self.command("PING") != b"+PONG":
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"redis-server did not start; see {d / 'redis.log'}")
            time.sleep(0.05)

    def command(self, *args: str) -> bytes | None:
        """One inline command, first reply line; None if Redis is not answering yet."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.sendall((" ".join(args) + "\r\n").encode())
                return s.makefile("rb").readline().rstrip()
        except OSError:
            return None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [self.proc.pid]


class RedisCluster:
    """A private Redis Cluster of three masters (no replicas), each on free loopback ports.

    Same face as `Redis` for the scenarios: `command` (FLUSHALL goes to every master),
    `pids` (all nodes: the Redis CPU is their sum), plus `node_pids` for CPU per node.
    """

    def __init__(self, scratch: Path, masters: int = 3):
        self.nodes: list[Redis] = []
        for n in range(masters):
            d = scratch / f"cluster{n}"
            d.mkdir()
            node = Redis.__new__(Redis)
            node.port = free_port()
            node.proc = spawn(
                ["redis-server", "--port", str(node.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(d), "--daemonize", "no",
                 "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                 "--cluster-config-file", str(d / "nodes.conf")],
                d / "redis.log",
            )
            self.nodes.append(node)
        deadline = time.monotonic() + 10
        while any(node.command("PING") != b"+PONG" for node in self.nodes):
            if time.monotonic() > deadline:
                raise SystemExit(f"a cluster redis-server did not start; see {scratch}/cluster*/")
            time.sleep(0.05)
        subprocess.run(["redis-cli", "--cluster", "create", *(n.url for n in self.nodes),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while not all(b"cluster_state:ok" in subprocess.run(
                ["redis-cli", "-p", str(node.port), "CLUSTER", "INFO"],
                capture_output=True).stdout for node in self.nodes):
            if time.monotonic() > deadline:
                raise SystemExit("the benchmark's Redis Cluster never said cluster_state:ok")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(node.url for node in self.nodes)

    def command(self, *args: str) -> bytes | None:
        replies = [node.command(*args) for node in self.nodes]
        return replies[0] if all(r == replies[0] for r in replies) else None

    def pids(self) -> list[int]:
        return [node.proc.pid for node in self.nodes]

    def node_pids(self) -> list[int]:
        return self.pids()


def external(spec: str) -> Target:
    """`NAME,STYLE,URL,PID`: a server someone else started, e.g. the Go service."""
    try:
        name, style, url, pid = spec.split(",")
        parsed = urllib.parse.urlsplit(url)
        target = Target(name, style, parsed.hostname, parsed.port, pid=int(pid))
    except ValueError:
        raise SystemExit(f"--external {spec!r}: want NAME,STYLE,URL,PID") from None
    if style not in ("heartbeat", "nchan") or not Path(f"/proc/{pid}").exists():
        raise SystemExit(f"--external {spec!r}: STYLE is heartbeat or nchan, PID a live process")
    return target


def wait_healthy(target: Target, logfile: Path, timeout: float = 30.0) -> None:
    """Wait for GET /health to answer 200 (404: a server without /health, ready once it answers)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(target.url + "/health", timeout=2):
                return
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return
        except OSError:
            pass
        if target.proc.poll() is not None or time.monotonic() > deadline:
            tail = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
            raise SystemExit(f"{target.name} did not become healthy; log {logfile}:\n{tail}")
        time.sleep(0.1)


def start_nchan(scratch: Path, redis: Redis, workers: int = 1) -> Target:
    """nginx + nchan from the reference template, on the shared Redis."""
    prefix = scratch / "nchan"
    prefix.mkdir(exist_ok=True)  # a restart reuses it
    target = Target("nchan", "nchan", "127.0.0.1", free_port())
    conf = NCHAN_TEMPLATE.read_text()
    for key, value in {"PORT": target.port, "REDIS_PORT": redis.port, "WORKERS": workers,
                       "PREFIX": prefix}.items():
        conf = conf.replace(f"@{key}@", str(value))
    (prefix / "nginx.conf").write_text(conf)
    # one worker holds every connection: worker_connections counts them (and its Redis
    # links), worker_rlimit_nofile its descriptors, capped by the hard limit we inherit
    conns = int(re.search(r"^\s*worker_connections\s+(\d+);", conf, re.M).group(1))
    nofile = int(re.search(r"^\s*worker_rlimit_nofile\s+(\d+);", conf, re.M).group(1))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    target.max_conns = min(conns, nofile, hard if hard != resource.RLIM_INFINITY else nofile) - 32
    logfile = prefix / "error.log"
    target.proc = spawn(["nginx", "-p", str(prefix), "-e", str(logfile), "-c", str(prefix / "nginx.conf")],
                        prefix / "stdout.log")
    wait_healthy(target, logfile)
    return target


def start_heartbeat(scratch: Path, twistd: str, root: Path, name: str,
                    redis: Redis | RedisCluster | None, workers: int,
                    max_streams: int | None = None, database: str | None = None) -> Target:
    """`twistd -n heartbeat` from this checkout, in a scratch directory (no stray .env).

    `max_streams` raises heartbeat's per-process stream cap (MAX_STREAMS, 10,000 by
    default) for scenarios with more streams than that. Without `redis` the store is
    the embedded one: `database` None is its default file (heartbeat.db in the scratch
    directory, removed first so each start is as fresh as a flushed Redis), `:memory:`
    keeps nothing."""
    workdir = scratch / name
    workdir.mkdir(exist_ok=True)  # a restart reuses it
    for old in workdir.glob("heartbeat.db*"):
        old.unlink()
    target = Target(name, "heartbeat", "127.0.0.1", free_port())
    # The load client opens its publisher connections before the streams and may leave
    # one unused for longer than heartbeat's 10 s REQUEST_TIMEOUT, which then closes it
    # (408) just as a ping goes out on it; nginx's equivalent, client_header_timeout,
    # is 60 s, so heartbeat gets the same here.
    argv = [twistd, "-n", "--pidfile=", "heartbeat",
            "--listen", f"tcp:{target.port}:interface=127.0.0.1", "--request-timeout", "60"]
    if redis:
        argv += ["--redis", redis.url]
    if database:
        argv += ["--database", database]
    if workers > 1:
        argv += ["--workers", str(workers)]
    if max_streams:
        argv += ["--max-streams", str(max_streams)]
    # one process holds all its connections (several workers: SO_REUSEPORT spreads them
    # unevenly, so count on 90% of the sum)
    per_process = min(max_streams or 10000, open_files_limit() - 64)
    target.max_conns = per_process if workers == 1 else per_process * workers * 9 // 10
    env = {k: v for k, v in os.environ.items() if k not in HEARTBEAT_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    logfile = workdir / "twistd.log"
    target.proc = spawn(argv, logfile, cwd=workdir, env=env)
    target.notes["argv"] = " ".join(argv[1:])
    wait_healthy(target, logfile)
    if workers > 1:
        wait_serving(target, logfile, workers)
    return target


def wait_serving(target: Target, logfile: Path, processes: int, timeout: float = 30.0) -> None:
    """Wait until each of heartbeat's `processes` has logged "heartbeat serving".

    /health answers as soon as one process serves; a worker still starting then
    holds its share of the connections in its socket's queue and grows by its whole
    start-up, which a scenario starting at once would count as its own (the idle
    scenario read ~30 MB of a worker's imports as memory per stream)."""
    deadline = time.monotonic() + timeout
    while logfile.read_text(errors="replace").count("heartbeat serving") < processes:
        if target.proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{target.name}: not every process is serving; log {logfile}")
        time.sleep(0.1)
