"""Instructions heartbeat runs per stream in an accept burst, counted by callgrind.

Timings on a shared 2-core machine move by ±20% from run to run, more than
most single changes to the accept path are worth; valgrind's instruction
count does not (the same count to 0.1% run after run, whatever else the
machine does). One daemon under callgrind, in Redis mode on a private Redis:
the counters are zeroed once it is ready, the burst is opened (STREAMS over
STREAMS/10 users, as in the idle scenario), and the counts up to the last
stream's headers are printed, in total and per stream. User-space
instructions only: the kernel's part (accept, epoll, send) is not counted.

    benchmarks/.venv/bin/python -m benchmarks.instructions [--streams 1000]

(``bash benchmarks/run`` makes that venv and builds ``benchmarks/.build/sseload``.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import procs

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--sseload", default=str(HERE / ".build" / "sseload"))
    parser.add_argument("--twistd", default=str(Path(sys.executable).parent / "twistd"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hb-instr-") as scratch_dir:
        scratch = Path(scratch_dir)
        try:
            count = burst_instructions(scratch, args)
        finally:
            procs.stop_all()
    print(json.dumps({"streams": args.streams, "instructions": count,
                      "per_stream": round(count / args.streams)}))
    return 0


def burst_instructions(scratch: Path, args: argparse.Namespace) -> int:
    redis = procs.Redis(scratch)
    target = procs.Target("heartbeat", "heartbeat", "127.0.0.1", procs.free_port())
    out = scratch / "callgrind.out"
    env = {k: v for k, v in os.environ.items() if k not in procs.HEARTBEAT_ENV}
    env["PYTHONPATH"] = str(HERE.parent)
    target.proc = procs.spawn(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         sys.executable, args.twistd, "-n", "--pidfile=", "heartbeat",
         "--listen", f"tcp:{target.port}:interface=127.0.0.1",
         "--redis", f"127.0.0.1:{redis.port}"],
        scratch / "twistd.log", cwd=scratch, env=env,
    )
    procs.log("starting heartbeat under callgrind (a minute or two)")
    procs.wait_healthy(target, scratch / "twistd.log", timeout=600)
    time.sleep(2)  # the health check's own connection settles
    control = ["callgrind_control"]
    subprocess.run(control + ["--zero", str(target.proc.pid)], check=True, stdout=subprocess.DEVNULL)
    load = subprocess.Popen(
        [args.sseload, "--host", target.host, "--port", str(target.port), "--style", "heartbeat",
         "--prefix", f"instr{os.getpid()}", "--subs", str(args.streams),
         "--users", str(max(1, args.streams // 10)), "--sub-timeout", "600"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    procs.STARTED.append(load)
    subscribed = json.loads(load.stdout.readline())
    if subscribed.get("subs_ok") != args.streams:
        raise SystemExit(f"not every stream opened: {subscribed}")
    subprocess.run(control + ["--dump", str(target.proc.pid)], check=True, stdout=subprocess.DEVNULL)
    dumps = sorted(scratch.glob("callgrind.out.*"))
    if not dumps:
        raise SystemExit("callgrind wrote no dump")
    for line in dumps[0].read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise SystemExit(f"no summary line in {dumps[0]}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
