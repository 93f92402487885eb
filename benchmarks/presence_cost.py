"""What holding presence streams costs: N idle streams, with and without ``presence=``.

    python -m benchmarks.presence_cost [--streams 19500] [--seconds 60] [--redis]

Starts one ``twistd heartbeat`` (the embedded SQLite store, or a private
redis-server with ``--redis``), opens ``streams`` streams each watching one
user, waits until every one has its first event, then measures the daemon's
CPU per second (and Redis's) over ``seconds`` while nothing else happens. It
does this twice: plain streams, then presence streams (``presence=0``, one
device each). The difference is what renewing the held devices costs; the
keep-alive comments are off (``KEEPALIVE=3600``) so they do not blur it.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing import Event, Process
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(port)


async def open_streams(port: int, first: int, count: int,
                       presence: bool) -> list[asyncio.StreamWriter]:
    writers = []

    async def one(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        claim = json.dumps({"userid": f"u{i}", "clientid": "web"})
        query = "?presence=0" if presence else ""
        writer.write(f"GET /subscribe/w{i}{query} HTTP/1.1\r\nHost: x\r\n"
                     f"X-User-Claim: {claim}\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        writers.append(writer)

    for start in range(first, first + count, 500):
        await asyncio.gather(*(one(i) for i in range(start, min(first + count, start + 500))))
    return writers


def client(port: int, first: int, count: int, presence: bool, opened: EventType, done: EventType) -> None:
    """One client process (a process has too few file descriptors for every stream)."""
    loop = asyncio.new_event_loop()
    writers = loop.run_until_complete(open_streams(port, first, count, presence))
    opened.set()
    done.wait()
    for writer in writers:
        writer.close()


def measure(args: argparse.Namespace, presence: bool, workdir: Path) -> dict[str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME")}
    env.update(PYTHONPATH=str(ROOT), KEEPALIVE="3600", MAX_STREAMS=str(args.streams + 100),
               DATABASE=str(workdir / f"hb-{presence}.db"))
    redis = None
    if args.redis:
        redis_port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "",
                                  "--appendonly", "no", "--dir", str(workdir)],
                                 stdout=subprocess.DEVNULL)
        wait_port(redis_port)
        env["REDIS"] = f"127.0.0.1:{redis_port}"
    daemon = subprocess.Popen(
        [str(Path(sys.executable).with_name("twistd")), "-n", "--pidfile=", "heartbeat",
         "--listen", f"tcp:{port}:interface=127.0.0.1"],
        cwd=workdir, env=env, stdout=open(workdir / "daemon.log", "ab"), stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        time.sleep(1)
        done = Event()
        half = args.streams // 2
        clients = []
        for first, count in ((0, half), (half, args.streams - half)):
            opened = Event()
            proc = Process(target=client, args=(port, first, count, presence, opened, done))
            proc.start()
            clients.append((proc, opened))
        for _proc, opened in clients:
            if not opened.wait(300):
                raise RuntimeError("the streams did not all open")
        time.sleep(5)  # the openings' pings are stored, renewals are under way
        wall = time.monotonic()
        cpu = cpu_seconds(daemon.pid)
        redis_cpu = cpu_seconds(redis.pid) if redis else 0.0
        time.sleep(args.seconds)
        wall = time.monotonic() - wall
        result = {"daemon_cpu_per_s": (cpu_seconds(daemon.pid) - cpu) / wall}
        if redis:
            result["redis_cpu_per_s"] = (cpu_seconds(redis.pid) - redis_cpu) / wall
        done.set()
        for proc, _ in clients:
            proc.join()
        return result
    finally:
        daemon.terminate()
        daemon.wait()
        if redis:
            redis.terminate()
            redis.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=19_500)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--redis", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain = measure(args, False, Path(tmp))
        held = measure(args, True, Path(tmp))
    print(json.dumps({"streams": args.streams, "store": "redis" if args.redis else "sqlite",
                      "plain": plain, "presence": held,
                      "renewal_cpu_per_s": held["daemon_cpu_per_s"] - plain["daemon_cpu_per_s"]}))


if __name__ == "__main__":
    main()
