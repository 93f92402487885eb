"""The presence sweep's cost: 100,000 users online, 1,000 going offline each second.

    python -m benchmarks.sweep_cost [--users 100000] [--rate 1000] [--seconds 20]

Starts a private redis-server and one ``twistd heartbeat`` on it (the sweeping
instance, with no streams), writes the users' presence with heartbeat's own
ping script so that ``rate`` deadlines fall due each second, then, while they
do, measures the daemon's CPU per second, Redis's CPU per second, and the
latency from each deadline to its offline event (read on 1,000 users'
channels). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.procs import free_port
from heartbeat.core.presence import Ping
from heartbeat.store.redis.codec import deadline_member, ping_args
from heartbeat.store.redis.keys import partition_keys, user_keys
from heartbeat.store.redis.lua import scripts

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "heartbeat:"
LEAD = 8  # seconds before the first deadline, for the daemon to start


class Resp:
    """A minimal blocking RESP client: enough to load scripts and subscribe."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")

    def send(self, *args: object) -> None:
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))

    def read(self) -> object:
        line = self.file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind in (b"+", b"-"):
            return rest.decode()
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)[:-2]
            return data.decode()
        if kind == b"*":
            return [self.read() for _ in range(int(rest))]
        raise ValueError(line)

    def call(self, *args: object) -> object:
        self.send(*args)
        return self.read()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu(conn: Resp) -> float:
    info = dict(line.split(":", 1) for line in str(conn.call("INFO", "cpu")).splitlines()
                if ":" in line)
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--seconds", type=int, default=20)
    options = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="heartbeat-sweep-"))
    rport, hport = free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", str(scratch)],
                             stdout=subprocess.DEVNULL)
    daemon = None
    try:
        time.sleep(0.5)
        conn = Resp(rport)
        store_and_publish = scripts("single").ping
        conn.call("SCRIPT", "LOAD", store_and_publish.source)
        start = time.time()
        # Batch k of ``rate`` users falls due LEAD + k seconds from now.
        now = int(start)
        for first in range(0, options.users, options.rate):
            keys: list[str] = []
            args: list[object] = [LEAD + first // options.rate, 5, ""]
            for n in range(first, min(first + options.rate, options.users)):
                userid = f"u{n}"
                user = user_keys(PREFIX, userid)
                keys += (user.key, user.devices, user.online,
                         *partition_keys(PREFIX, user.partition))
                args += ping_args(Ping(userid, now, "0", "c"), deadline_member(userid, "c"),
                                  False)
            conn.send("EVALSHA", store_and_publish.sha, len(keys), *keys, *args)
        for _ in range(0, options.users, options.rate):
            conn.read()
        deadlines = {f"u{n}": start + LEAD + n // options.rate for n in range(options.users)}
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS", "PRESENCE_TIMEOUT")}
        env["PYTHONPATH"] = str(ROOT)
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "twistd"), "-n", "--pidfile=", "heartbeat",
             "--listen", f"tcp:{hport}:interface=127.0.0.1", "--redis", f"127.0.0.1:{rport}"],
            cwd=scratch, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Watch one user in every hundred: their offline events give the latency.
        watcher = Resp(rport)
        watched = [f"u{n}" for n in range(0, options.users, 100)]
        watcher.send("SUBSCRIBE", *(PREFIX + u for u in watched))
        for _ in watched:
            watcher.read()
        while time.time() < start + LEAD:
            time.sleep(0.05)
        cpu0, rcpu0, t0 = cpu_seconds(daemon.pid), redis_cpu(conn), time.time()
        latencies: list[float] = []
        end = t0 + options.seconds
        # Watched users go offline ten a second all through the window, so a
        # blocking read always returns soon.
        while time.time() < end:
            event = json.loads(watcher.read()[2])
            if "clientid" not in event and not event["online"]:
                latencies.append(time.time() - deadlines[event["userid"]])
        cpu1, rcpu1, t1 = cpu_seconds(daemon.pid), redis_cpu(conn), time.time()
        latencies.sort()
        wall = t1 - t0
        print(json.dumps({
            "users": options.users, "offline_per_s": options.rate, "window_s": round(wall, 2),
            "daemon_cpu_per_s": round((cpu1 - cpu0) / wall, 4),
            "redis_cpu_per_s": round((rcpu1 - rcpu0) / wall, 4),
            "events_seen": len(latencies),
            "latency_p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
            "latency_p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1)
            if latencies else None,
            "latency_max_ms": round(1000 * latencies[-1], 1) if latencies else None,
        }))
    finally:
        for proc in (daemon, redis):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)


if __name__ == "__main__":
    main()
