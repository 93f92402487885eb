"""The scenarios.  Each takes a running target and returns one dict of figures (flat, but
for `population`, which gives one dict per population size under "runs").

Server CPU is user+sys of the target's process tree (and of Redis, reported apart) read
from /proc before and after the measured window; client CPU is the load client's own for
the same window (sseload reports getrusage; wrk is measured as our reaped child).  Setup
(opening subscribers before a fan-out) is outside the window.
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import procs
from .procs import Redis, Target, cpu_seconds, listen_drops, machine_busy_seconds, rss_kib

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Sizes:
    """Scenario sizes from the issue; `scale` shrinks them for a smoke run."""

    scale: float = 1.0

    def n(self, full: int) -> int:
        return max(1, round(full * self.scale))

    def secs(self, full: float) -> float:
        return max(1.0, full * self.scale)


class Window:
    """CPU over a measured interval: server, Redis, client, and everything else.

    `other_cpu_s` is what the rest of the machine used meanwhile: if it is large, something
    outside the benchmark competed for the two cores and the figures are not trustworthy.
    """

    def __init__(self, target: Target, redis: Redis | None):
        self.redis = redis
        self.pids = target.pids()
        self.t0 = time.monotonic()
        self.machine0 = machine_busy_seconds()
        self.server0 = cpu_seconds(self.pids)
        self.redis0 = cpu_seconds(redis.pids()) if redis else 0.0
        # a cluster: each node's CPU too, to see how the load spreads
        self.nodes = redis.node_pids() if hasattr(redis, "node_pids") else []
        self.nodes0 = [cpu_seconds([pid]) for pid in self.nodes]

    def close(self, client_cpu_s: float) -> dict:
        server = cpu_seconds(self.pids) - self.server0
        redis = cpu_seconds(self.redis.pids()) - self.redis0 if self.redis else 0.0
        other = machine_busy_seconds() - self.machine0 - server - redis - client_cpu_s
        out = {"wall_s": round(time.monotonic() - self.t0, 3), "server_cpu_s": round(server, 3),
               "client_cpu_s": round(client_cpu_s, 3), "other_cpu_s": round(max(0.0, other), 2)}
        if self.redis:
            out["redis_cpu_s"] = round(redis, 3)
        if self.nodes:
            per_node = [cpu_seconds([pid]) - c0 for pid, c0 in zip(self.nodes, self.nodes0)]
            out["redis_node_cpu_s"] = [round(c, 3) for c in per_node]
            out["redis_busiest_node_pct"] = round(100 * max(per_node) / max(redis, 1e-9), 1)
        return out


class SseLoad:
    """One sseload process: it subscribes, then publishes on `go`; leaving the `with`
    block closes its stdin, its cue to close every stream and exit."""

    def __init__(self, binary: str, target: Target, prefix: str, **opts):
        argv = [binary, "--host", target.host, "--port", str(target.port),
                "--style", target.style, "--prefix", prefix]
        for key, value in opts.items():
            argv += ["--" + key.replace("_", "-"), str(value)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.STARTED.append(self.proc)  # so an interrupted run ends it too

    def read(self, event: str) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"sseload exited ({self.proc.wait()}) before '{event}'")
        msg = json.loads(line)
        if msg.pop("event") != event:
            raise RuntimeError(f"sseload said {msg} when '{event}' was due")
        return msg

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def __enter__(self) -> SseLoad:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        procs.STARTED.remove(self.proc)


def settle(seconds: float = 1.0) -> None:
    """Let the server finish bookkeeping (and its CPU go quiet) between phases."""
    time.sleep(seconds)


def idle(target: Target, redis: Redis | None, ctx: dict) -> dict:
    """5,000 streams over 500 users opened at once: accept time, RSS growth per stream."""
    streams, users = ctx["sizes"].n(5000), ctx["sizes"].n(500)
    rss0 = rss_kib(target.pids())
    drops0 = listen_drops()
    win = Window(target, redis)
    with SseLoad(ctx["sseload"], target, ctx["prefix"] + "i", subs=streams, users=users,
                 sub_timeout=30) as load:
        sub = load.read("subscribed")
        out = {"streams": streams, "users": users, **sub, **win.close(sub.pop("client_cpu_s")),
               "listen_drops": listen_drops() - drops0}
        settle(2.0)
        rss1 = rss_kib(target.pids())
    out.update(rss_before_kib=rss0, rss_after_kib=rss1,
               kib_per_stream=round((rss1 - rss0) / max(1, sub["subs_ok"]), 2))
    settle(2.0)
    return out


def _publish(target: Target, redis: Redis | None, ctx: dict, prefix: str, **opts) -> dict:
    """Open the subscribers, wait, then publish; the window covers only the publishing."""
    with SseLoad(ctx["sseload"], target, ctx["prefix"] + prefix, **opts) as load:
        sub = load.read("subscribed")
        settle()  # a server may acknowledge a stream before its Redis SUBSCRIBE is done
        win = Window(target, redis)
        load.send("go")
        done = load.read("done")
        out = {"subs_ok": sub["subs_ok"], "subs_failed": sub["subs_failed"], **done,
               **win.close(done.pop("client_cpu_s"))}
    settle()
    return out


def fanout(target: Target, redis: Redis | None, ctx: dict) -> dict:
    """One user, 2,000 subscribers, 200 pings back-to-back on one keep-alive connection."""
    s = ctx["sizes"]
    return _publish(target, redis, ctx, "f", subs=s.n(2000), users=1, pings=s.n(200),
                    ping_users=1, rate=0, pub_conns=1, quiet=3, deadline=60)


def mixed(target: Target, redis: Redis | None, ctx: dict) -> dict:
    """1,000 users x 3 subscribers, 500 pings/s open loop for 10 s (round-robin users).

    Latency counts from each ping's scheduled send time; 32 publisher connections, so a
    ping waits for a free one only when 32 are already outstanding (that wait counts too).
    """
    s = ctx["sizes"]
    users, rate = s.n(1000), 500
    return _publish(target, redis, ctx, "m", subs=3 * users, users=users,
                    pings=round(rate * s.secs(10)), ping_users=users, rate=rate,
                    pub_conns=32, quiet=3, deadline=60)


def pingrate(target: Target, redis: Redis | None, ctx: dict) -> dict:
    """wrk, 64 keep-alive connections, pings for 10,000 distinct users, no subscribers."""
    s = ctx["sizes"]
    duration = s.secs(10)
    argv = ["wrk", "-t1", "-c64", f"-d{duration:g}s", "--timeout", "5s", "-s",
            str(HERE / "ping.lua"), target.url, "--", target.style,
            ctx["prefix"] + "p", str(s.n(10000))]
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    win = Window(target, redis)
    run = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = win.close(children1.ru_utime + children1.ru_stime
                    - children0.ru_utime - children0.ru_stime)
    lines = [l for l in run.stdout.splitlines() if l.startswith("WRKJSON ")]
    if run.returncode or not lines:
        raise RuntimeError(f"wrk failed ({run.returncode}): {run.stdout[-500:]} {run.stderr[-500:]}")
    res = json.loads(lines[0][len("WRKJSON "):])
    res["pings_per_s"] = round((res["requests"] - res["non_2xx"]) / res["duration_s"])  # 2xx only
    settle()
    return {"connections": 64, "users": s.n(10000), **res, **out}


# population: sizes tried (before --scale), contacts per stream, ping period in seconds.
# 18,000 rather than 20,000/40,000: on the development machine no process may hold more
# than 20,000 descriptors (hard limit, no CAP_SYS_RESOURCE), server and client alike.
POPULATION_USERS = (5000, 10000, 14000, 18000)
POPULATION_CONTACTS = 20
POPULATION_PERIOD_S = 20.0
POPULATION_P99_LIMIT_MS = 50.0
POPULATION_PUB_CONNS = 64
POPULATION_GRACE_S = 5.0
POPULATION_SEED = 1
# population_quiet: the share of pings (%) that change their user's status.
POPULATION_STATUS_CHANGES = 5


def population(target: Target, redis: Redis | None, ctx: dict) -> dict:
    """U users, each holding one stream of C contacts and pinging every P seconds.

    Per size U (each on a freshly started server and a flushed Redis, when the harness
    can restart the target): open the U streams (at most 512 handshakes in flight), wait
    until all have headers, then ping for 2 P seconds, user i at i P/U + k P (an open-loop
    schedule of U/P pings/s); only the second period is measured (latency from each
    ping's scheduled time, CPU, RSS), and a delivery still missing 5 s after the last ping
    (of silence) is lost. The figure of merit is the largest U whose p99 stays under 50 ms
    with nothing lost and every stream open.
    """
    s = ctx["sizes"]
    contacts = ctx.get("population_contacts", POPULATION_CONTACTS)
    period = s.secs(ctx.get("population_period", POPULATION_PERIOD_S))
    restart = ctx.get("restart")
    runs = []
    for index, full in enumerate(ctx.get("population_users", POPULATION_USERS)):
        users = s.n(full)
        need = users + POPULATION_PUB_CONNS + 64  # the client's streams, publishers, slack
        limits = [("this run's open-files limit (ulimit -n)", procs.open_files_limit())]
        if target.max_conns is not None:
            limits.append((f"{target.name}'s connection limit", target.max_conns + 64))
        too_small = [f"{what} {limit:,}" for what, limit in limits if limit < need]
        if contacts >= users:
            too_small.append(f"{contacts} contacts need more than {contacts} users")
        if too_small:
            runs.append({"users": users, "skipped": f"needs ~{need:,} descriptors in one process: "
                                                     + "; ".join(too_small)})
            procs.log(f"population U={users}: skipped ({runs[-1]['skipped']})")
            continue
        if restart:
            target = restart()  # no memory or subscriptions left from the previous size
        procs.log(f"population U={users} C={contacts} P={period:g}s on {target.url}")
        runs.append(_population_run(target, redis, ctx, users, contacts, period,
                                    f"{ctx['prefix']}q{index}_", fresh=bool(restart)))
    return {**_population_verdict(runs), "contacts": contacts, "period_s": period,
            "p99_limit_ms": POPULATION_P99_LIMIT_MS, "runs": runs}


def _population_run(target: Target, redis: Redis | None, ctx: dict, users: int,
                    contacts: int, period: float, prefix: str, fresh: bool) -> dict:
    settle()
    rss0 = rss_kib(target.pids())
    rate = users / period
    # one source address per 20,000 connections keeps well inside the ephemeral ports
    # (32768-60999) to one server port
    sources = 1 if target.host in ("localhost", "::1") else math.ceil(
        (users + POPULATION_PUB_CONNS) / 20000)
    with SseLoad(ctx["sseload"], target, prefix, subs=users, users=users, ping_users=users,
                 pings=2 * users, contacts=contacts, seed=POPULATION_SEED, rate=f"{rate:.6f}",
                 measure_from=users, pub_conns=POPULATION_PUB_CONNS, quiet=POPULATION_GRACE_S,
                 deadline=2 * period + POPULATION_GRACE_S + 60, sub_timeout=120,
                 max_pending=512, source_addrs=sources,
                 status_changes=ctx.get("status_changes", 0)) as load:
        sub = load.read("subscribed")
        procs.log(f"population U={users}: {sub['subs_ok']:,} streams open in {sub['accept_s']:.1f} s")
        settle()  # a server may acknowledge a stream before its Redis SUBSCRIBE is done
        rss_open = rss_kib(target.pids())
        load.send("go")
        load.read("window_start")
        win = Window(target, redis)
        end = load.read("window_end")
        window = win.close(end["client_cpu_s"])
        rss1 = rss_kib(target.pids())
        done = load.read("done")
    wall = window["wall_s"] or 1.0
    out = {"users": users, "contacts": contacts, "period_s": period, "pings_per_s": round(rate, 1),
           "fresh_server": fresh, "source_addrs": sources,
           "subs_ok": sub["subs_ok"], "subs_failed": sub["subs_failed"],
           "subs_pending": sub["subs_pending"], "open_s": sub["accept_s"],
           **{k: v for k, v in done.items() if k != "client_cpu_s"},
           "client_cpu_run_s": done["client_cpu_s"], **window,
           "server_core_pct": round(100 * window["server_cpu_s"] / wall, 1),
           "client_core_pct": round(100 * window["client_cpu_s"] / wall, 1),
           "rss_before_kib": rss0, "rss_open_kib": rss_open, "rss_end_kib": rss1,
           "rss_kib_per_user": round((rss1 - rss0) / users, 2),
           "rss_open_kib_per_user": round((rss_open - rss0) / users, 2)}
    # what each watcher's stream carried during the window, per minute
    per_watcher_min = max(1, sub["subs_ok"]) * wall / 60
    out["events_per_watcher_min"] = round(done["window_sub_events"] / per_watcher_min, 2)
    out["bytes_per_watcher_min"] = round(done["window_sub_bytes"] / per_watcher_min, 1)
    if window.get("redis_cpu_s") is not None:
        out["redis_core_pct"] = round(100 * window["redis_cpu_s"] / wall, 1)
    # one core is all a single-threaded client has: near it, the client may be the limit
    out["client_saturated"] = out["client_core_pct"] >= 90
    p99 = out.get("lat_p99_ms")
    out["p99_ok"] = (p99 is not None and p99 < POPULATION_P99_LIMIT_MS and out["lost"] == 0
                     and out["subs_ok"] == users and out["pings_failed"] == 0
                     and out["pings_unanswered"] == 0)
    settle(2.0)
    return out


def _population_verdict(runs: list[dict]) -> dict:
    """The largest U that passed, every smaller measured size passing too; whether a
    larger measured size failed (else the figure is only a lower bound)."""
    best, failing = 0, None
    for r in sorted((r for r in runs if "skipped" not in r), key=lambda r: r["users"]):
        if r["p99_ok"] and failing is None:
            best = r["users"]
        elif not r["p99_ok"] and failing is None:
            failing = r["users"]
    measured = [r["users"] for r in runs if "skipped" not in r]
    return {"max_users_p99_under_50ms": best, "first_failing_users": failing,
            "max_users_is_lower_bound": failing is None and bool(measured),
            "client_saturated": any(r.get("client_saturated") for r in runs)}


def population_quiet(target: Target, redis: Redis | None, ctx: dict) -> dict:
    """The population with quiet streams: each stream asks for ``changes=only``, and 5% of
    pings change their user's status (the others repeat it, as a chat client's periodic
    ping does); only those changes are expected. Compare its events and bytes per watcher
    per minute, and its largest U, with ``population``'s (every ping an event)."""
    if target.style != "heartbeat":
        return {"skipped": "changes=only is heartbeat's"}
    return population(target, redis, {**ctx, "status_changes": POPULATION_STATUS_CHANGES})


SCENARIOS = {"idle": idle, "fanout": fanout, "pingrate": pingrate, "mixed": mixed,
             "population": population, "population_quiet": population_quiet}
# What a bare `bash benchmarks/run` runs (~3 minutes); population takes ~1 minute per
# size per target, so it is asked for by name.
DEFAULT_SCENARIOS = ("idle", "fanout", "pingrate", "mixed")
