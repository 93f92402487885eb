"""The embedded store's start-up with many stored users: time to listen, to be ready, and memory.

    python -m benchmarks.startup [--users 1000000] [--baseline 1000] [--repo PATH]

For each size (``--baseline`` first, then ``--users``) it writes a fresh
SQLite file through the store's own writer (``Database.write``, the schema of
the code under test): that many users, each with one device, all offline and
unwatched, as a deployment holds them after months. Then it starts
``twistd -n heartbeat`` on it and reports, from the start of the process:
``port_s`` (the port accepts a connection), ``ready_s`` (``/metrics`` reports
``heartbeat_online_users``: presence is loaded), ``status_ok`` (``/status`` of a
stored user is right), ``rss_mib`` (VmRSS 2 s after ready) and ``peak_mib``
(VmHWM: the most it ever held). One JSON line per size.

``--repo`` runs another checkout's code (``PYTHONPATH``), to measure before and
after a change. Only loopback; the machine's other load moves the times.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).with_name("twistd"))

# Run with the checkout under test on PYTHONPATH: older checkouts' Database.open
# also returned what they read.
_BUILD = """
import sys
from heartbeat.store.sqlite import Changes, Database
path, users = sys.argv[1], int(sys.argv[2])
opened = Database.open(path)
db = opened[0] if isinstance(opened, tuple) else opened
for start in range(0, users, 100_000):
    changes = Changes()
    for n in range(start, min(users, start + 100_000)):
        userid = f"user{n}"
        changes.users[userid] = (userid, 1_700_000_000 + n, "s", "phone")
        changes.devices[(userid, "phone")] = (userid, "phone", 1_700_000_000 + n, "s", None)
    db.write(changes)
db.close()
db.unlock()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(repo: Path) -> dict[str, str]:
    from benchmarks.procs import HEARTBEAT_ENV

    env = {k: v for k, v in os.environ.items() if k not in HEARTBEAT_ENV}
    env["PYTHONPATH"] = str(repo)
    return env


def _memory(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def measure(users: int, repo: Path, directory: Path) -> dict[str, object]:
    path = directory / f"heartbeat-{users}.db"
    env = _environment(repo)
    built = time.monotonic()
    subprocess.run([sys.executable, "-c", _BUILD, str(path), str(users)], env=env, check=True,
                   cwd=directory)  # not this checkout: -c puts the working directory first
    build_s = time.monotonic() - built
    port = free_port()
    started = time.monotonic()
    log = directory / f"heartbeat-{users}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "heartbeat", "--listen",
             f"tcp:{port}:interface=127.0.0.1", "--database", str(path)],
            cwd=directory, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() - started > 300:
                    raise RuntimeError(f"heartbeat did not listen: {log.read_text()[-2000:]}"
                                       ) from None
                time.sleep(0.01)
        port_s = time.monotonic() - started
        while b"heartbeat_online_users" not in _get(port, "/metrics")[1]:
            time.sleep(0.01)
        ready_s = time.monotonic() - started
        userid = f"user{random.randrange(users)}"
        code, body = _get(port, f"/status?user={userid}")
        expected = 1_700_000_000 + int(userid[4:])
        status_ok = code == 200 and json.loads(body)[userid]["time"] == expected
        time.sleep(2)
        rss, peak = _memory(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    return {"users": users, "build_s": round(build_s, 2), "port_s": round(port_s, 3),
            "ready_s": round(ready_s, 3), "status_ok": status_ok,
            "rss_mib": round(rss, 1), "peak_mib": round(peak, 1),
            "file_mib": round(path.stat().st_size / 2**20, 1)}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__)
    p.add_argument("--users", default="1000000",
                   help="stored users, comma-separated sizes (default: %(default)s)")
    p.add_argument("--baseline", type=int, default=1000,
                   help="the small size measured first, to compare with (default: %(default)s)")
    p.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose code runs")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="hb-startup-") as scratch:
        for users in [args.baseline, *(int(n) for n in args.users.split(","))]:
            print(json.dumps(measure(users, args.repo.resolve(), Path(scratch))), flush=True)


if __name__ == "__main__":
    main()
