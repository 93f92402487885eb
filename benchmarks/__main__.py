"""Run every scenario against every target; print one JSON line each, then the tables.

Targets run one at a time (the others stopped), each on the same private Redis (flushed
between targets), so the two cores are shared only by the target, Redis and the client.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import procs, report
from .scenarios import (
    DEFAULT_SCENARIOS,
    POPULATION_CONTACTS,
    POPULATION_PERIOD_S,
    POPULATION_USERS,
    SCENARIOS,
    Sizes,
)

TARGETS = ("nchan", "heartbeat-redis", "heartbeat-sqlite", "heartbeat-inproc")
# The targets on heartbeat's embedded store: its default SQLite file, or nothing kept.
EMBEDDED = {"heartbeat-sqlite": None, "heartbeat-inproc": ":memory:"}
DEFAULT_TARGETS = ("nchan", "heartbeat-redis", "heartbeat-sqlite")
# heartbeat on a Redis Cluster of three masters (started only when one of these is asked for)
CLUSTER = "heartbeat-cluster"
TARGETS += (CLUSTER,)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/run", description=__doc__)
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help=f"comma-separated, from {', '.join(TARGETS)}, heartbeat-redis-wN, "
                        "heartbeat-cluster-wN (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1,
                   help="also run heartbeat-redis-wN: heartbeat in Redis mode with --workers N "
                        "(and heartbeat-cluster-wN when heartbeat-cluster is a target)")
    p.add_argument("--external", action="append", default=[], metavar="NAME,STYLE,URL,PID",
                   help="also measure a server started elsewhere (STYLE: heartbeat or nchan; "
                        "PID: its root process, for CPU and RSS); repeatable")
    p.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                   help=f"comma-separated, from {', '.join(SCENARIOS)} (default: %(default)s)")
    p.add_argument("--population-users", default=",".join(map(str, POPULATION_USERS)),
                   help="population sizes U to try, before --scale (default: %(default)s)")
    p.add_argument("--population-contacts", type=int, default=POPULATION_CONTACTS,
                   help="users named by each population stream (default: %(default)s)")
    p.add_argument("--population-period", type=float, default=POPULATION_PERIOD_S,
                   help="seconds between one user's pings, before --scale (default: %(default)s)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply counts and durations (e.g. 0.1 for a smoke run)")
    p.add_argument("--sseload", required=True, help="the built load client")
    p.add_argument("--twistd", default="twistd", help="twistd of a venv with heartbeat's deps")
    p.add_argument("--root", default=str(Path(__file__).resolve().parent.parent),
                   help="the heartbeat checkout to run (default: this one)")
    p.add_argument("--keep", action="store_true", help="keep the scratch dir (logs, configs)")
    args = p.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    if args.workers > 1:
        wanted = [f"heartbeat-redis-w{args.workers}"]
        if CLUSTER in args.targets:
            wanted.append(f"{CLUSTER}-w{args.workers}")
        args.targets += [t for t in wanted if t not in args.targets]
    args.external = {t.name: t for t in map(procs.external, args.external)}
    args.targets += list(args.external)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    for s in args.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}")
    try:
        args.population_users = [int(u) for u in args.population_users.split(",") if u]
    except ValueError:
        p.error("--population-users: comma-separated integers")
    if not 1 <= args.population_contacts <= 255:
        p.error("--population-contacts: 1 to 255 (nchan's limit of channels per subscriber)")
    # heartbeat refuses streams past MAX_STREAMS (10,000 per process by default): for the
    # population scenario the cap is raised just above its largest size
    args.max_streams = None
    if {"population", "population_quiet"} & set(args.scenarios):
        largest = max(Sizes(args.scale).n(u) for u in args.population_users or [0])
        if largest + 1000 > 10000:
            args.max_streams = largest + 1000
    for t in args.targets:
        if t not in TARGETS and t not in args.external and _workers(t) is None:
            p.error(f"unknown target {t!r}")
    return args


def _workers(name: str) -> int | None:
    """N of `heartbeat-redis-wN` or `heartbeat-cluster-wN`; None for any other name."""
    for base in ("heartbeat-redis-w", CLUSTER + "-w"):
        if name.startswith(base) and name[len(base):].isdigit():
            return int(name[len(base):])
    return None


def start(name: str, scratch: Path, redis, args) -> procs.Target:
    if name in args.external:
        return args.external[name]
    if name == "nchan":
        return procs.start_nchan(scratch, redis)
    if not shutil.which(args.twistd):
        raise SystemExit(f"{args.twistd} not found: is heartbeat installed? (--targets nchan runs without it)")
    return procs.start_heartbeat(scratch, args.twistd, Path(args.root), name,
                                 None if name in EMBEDDED else redis, _workers(name) or 1,
                                 args.max_streams, EMBEDDED.get(name))


def run(args, scratch: Path) -> dict:
    single = procs.Redis(scratch)
    procs.log(f"redis-server on 127.0.0.1:{single.port}; scratch {scratch}")
    ctx = {"sseload": args.sseload, "sizes": Sizes(args.scale),
           "population_users": args.population_users,
           "population_contacts": args.population_contacts,
           "population_period": args.population_period}
    results: dict[str, dict] = {}
    cluster = None
    for name in args.targets:
        if name.startswith(CLUSTER):
            if cluster is None:
                cluster = procs.RedisCluster(scratch)
                procs.log(f"redis cluster of three masters: {cluster.url}")
            redis = cluster
        else:
            redis = single
        redis.command("FLUSHALL")
        current = [start(name, scratch, redis, args)]
        target = current[0]
        procs.require_loopback(target.host)
        procs.log(f"{name} on {target.url} (pids {target.pids()})")

        def restart(name=name, current=current, redis=redis) -> procs.Target:
            """A fresh server on a flushed Redis (for scenarios that measure per size)."""
            procs.forget(current[0].proc)
            redis.command("FLUSHALL")
            current[0] = start(name, scratch, redis, args)
            procs.require_loopback(current[0].host)
            procs.log(f"{name} restarted on {current[0].url} (pids {current[0].pids()})")
            return current[0]

        # an --external server is not ours to restart
        ctx["restart"] = restart if target.proc else None
        # whose Redis CPU to report: ours, unless the target does not use it
        target_redis = None if name in EMBEDDED or name in args.external else redis
        results[name] = {}
        try:
            for scenario in args.scenarios:
                ctx["prefix"] = f"r{int(time.time()) % 100000}"
                procs.log(f"{name}: {scenario}")
                target = current[0]
                try:
                    fig = SCENARIOS[scenario](target, target_redis, ctx)
                except Exception as e:  # one broken scenario must not hide the others
                    fig = {"error": f"{type(e).__name__}: {e}"}
                results[name][scenario] = fig
                print(json.dumps({"target": name, "scenario": scenario, "url": current[0].url,
                                  **current[0].notes, **fig}), flush=True)
        finally:
            if current[0].proc:
                procs.stop(current[0].proc)
    return results


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scratch = Path(tempfile.mkdtemp(prefix="heartbeat-bench-"))
    try:
        results = run(args, scratch)
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(report.table(results, args.targets))
    print()
    print(report.cpu_table(results, args.targets))
    for scenario in ("population", "population_quiet"):
        population = report.population_table(results, args.targets, scenario)
        if population:
            print()
            print(population)
    for warning in (report.noise_warning(results), report.client_warning(results)):
        if warning:
            print("\n" + warning)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
