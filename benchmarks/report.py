"""The closing table: each headline figure per target, and heartbeat/nchan ratios."""

from __future__ import annotations

# (label, scenario, key, goal for heartbeat/nchan from issue 7, format)
HEADLINES = [
    ("idle KiB/stream", "idle", "kib_per_stream", "<= 0.75", "{:.1f}"),
    ("idle accept s", "idle", "accept_s", "<= 2", "{:.3f}"),
    ("fan-out deliveries/s", "fanout", "deliveries_per_s", ">= 0.7", "{:,.0f}"),
    ("ping rate pings/s", "pingrate", "pings_per_s", ">= 0.3 (w2: >= 0.5)", "{:,.0f}"),
    ("mixed p99 ms", "mixed", "lat_p99_ms", "<= 3", "{:.2f}"),
    ("mixed events lost", "mixed", "lost", "0", "{:d}"),
    ("fan-out events lost", "fanout", "lost", "0", "{:d}"),
    # the largest population size U measured with p99 < 50 ms and nothing lost; "≥" when
    # no larger size was measured (skipped, or not asked for): a lower bound
    ("population max U, p99<50ms", "population", "max_users_p99_under_50ms", "-", "{:,d}"),
    ("quiet population max U", "population_quiet", "max_users_p99_under_50ms", "-", "{:,d}"),
]


def _fmt(fmt: str, value) -> str:
    return "-" if value is None else fmt.format(value)


def _value(figures: dict, key: str, fmt: str) -> tuple[object, str]:
    """A headline value and its text ("≥" marks a lower bound)."""
    v = figures.get(key)
    text = _fmt(fmt, v)
    if key == "max_users_p99_under_50ms" and v is not None and figures.get("max_users_is_lower_bound"):
        text = "≥" + text
    return v, text


def table(results: dict[str, dict[str, dict]], targets: list[str]) -> str:
    """results[target][scenario] = figures.  Ratios only against nchan, for the rest."""
    others = [t for t in targets if t != "nchan"]
    header = ["metric"] + targets + [f"{t}/nchan" for t in others if "nchan" in targets] + ["goal"]
    rows = [header]
    for label, scenario, key, goal, fmt in HEADLINES:
        cells = {t: _value(results.get(t, {}).get(scenario, {}), key, fmt) for t in targets}
        values = {t: v for t, (v, _) in cells.items()}
        if all(v is None for v in values.values()):
            continue
        row = [label] + [cells[t][1] for t in targets]
        if "nchan" in targets:
            base = values["nchan"]
            for t in others:
                v = values[t]
                bound = key == "max_users_p99_under_50ms" and any(
                    results.get(x, {}).get(scenario, {}).get("max_users_is_lower_bound")
                    for x in ("nchan", t))
                row.append("-" if key == "lost" or bound or v is None or not base
                           else f"{v / base:.2f}")
        rows.append(row + [goal])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def cpu_table(results: dict[str, dict[str, dict]], targets: list[str]) -> str:
    """CPU seconds in each measured window: server / redis / client, and the window's wall time.

    A client near 1.0 CPU-s per wall-s would be the bottleneck; a large "rest of machine"
    means something outside the benchmark was competing for the cores.
    """
    lines = ["cpu s (server / redis / client / rest of machine) over wall s"]
    for t in targets:
        cells = []
        for scenario, r in _windows(results.get(t, {})):
            cells.append(f"{scenario} {r.get('server_cpu_s', 0):.2f}/{r.get('redis_cpu_s', 0):.2f}"
                         f"/{r.get('client_cpu_s', 0):.2f}/{r.get('other_cpu_s', 0):.2f}"
                         f" in {r.get('wall_s', 0):.2f}"
                         + (" (redis nodes " + "/".join(f"{c:.2f}" for c in r["redis_node_cpu_s"])
                            + f", busiest {r['redis_busiest_node_pct']:.0f}%)"
                            if "redis_node_cpu_s" in r else ""))
        lines.append(f"  {t}: " + "; ".join(cells))
    return "\n".join(lines)


def noise_warning(results: dict[str, dict[str, dict]], limit: float = 0.2) -> str | None:
    """A warning when other processes used more than `limit` cores in some window."""
    worst, where = 0.0, ""
    for t, scenarios in results.items():
        for scenario, r in _windows(scenarios):
            if r.get("wall_s") and r.get("other_cpu_s", 0) >= 0.1:  # above /proc's tick noise
                cores = r["other_cpu_s"] / r["wall_s"]
                if cores > worst:
                    worst, where = cores, f"{t} {scenario}"
    if worst <= limit:
        return None
    return (f"WARNING: other processes used up to {worst:.2f} of the 2 cores during a measured "
            f"window ({where}): these figures are disturbed; rerun on a quiet machine.")


def _windows(scenarios: dict[str, dict]):
    """(label, figures) of every measured window: one per scenario, one per population size."""
    for scenario, r in scenarios.items():
        if scenario.startswith("population"):
            for run in r.get("runs", []):
                if "skipped" not in run:
                    yield f"{scenario} U={run['users']}", run
        else:
            yield scenario, r


def population_table(results: dict[str, dict[str, dict]], targets: list[str],
                     scenario: str = "population") -> str | None:
    """Per target and population size: latency, losses, server/client CPU, RSS per user,
    and what each watcher's stream carried (events and bytes a minute)."""
    runs = [(t, r) for t in targets for r in results.get(t, {}).get(scenario, {}).get("runs", [])]
    if not runs:
        return None
    first = next(results[t][scenario] for t, _ in runs)
    header = ["target", "users", "pings/s", "p50 ms", "p99 ms", "max ms", "lost/expected",
              "server cpu s (core)", "redis cpu s", "KiB/user", "client cpu s (core)", "p99<50",
              "events/watcher/min", "bytes/watcher/min"]
    rows = [header]
    for t, r in runs:
        if "skipped" in r:
            rows.append([t, f"{r['users']:,}", "skipped: " + r["skipped"]] + [""] * (len(header) - 3))
            continue
        rows.append([
            t, f"{r['users']:,}", f"{r['pings_per_s']:,.0f}", _fmt("{:.2f}", r.get("lat_p50_ms")),
            _fmt("{:.2f}", r.get("lat_p99_ms")), _fmt("{:.1f}", r.get("lat_max_ms")),
            f"{r['lost']}/{r['expected']:,}" + ("" if r["subs_ok"] == r["users"]
                                                 else f" ({r['users'] - r['subs_ok']} streams not open)"),
            f"{r['server_cpu_s']:.2f} ({r['server_core_pct']:.0f}%)",
            _fmt("{:.2f}", r.get("redis_cpu_s")), f"{r['rss_kib_per_user']:.1f}",
            f"{r['client_cpu_s']:.2f} ({r['client_core_pct']:.0f}%)" + (" SATURATED" if r["client_saturated"] else ""),
            "yes" if r["p99_ok"] else "no",
            _fmt("{:.1f}", r.get("events_per_watcher_min")),
            _fmt("{:,.0f}", r.get("bytes_per_watcher_min")),
        ])
    widths = [max(len(row[i]) for row in rows if i < 2 or not row[2].startswith("skipped"))
              for i in range(len(header))]
    lines = []
    for row in rows:
        if row[2].startswith("skipped"):
            lines.append("  ".join([row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2]]))
        else:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(row, widths))))
    lines.insert(1, "-" * len(lines[0]))
    quiet = (", changes=only, 5% of pings a status change" if scenario == "population_quiet"
             else "")
    title = (f"{scenario}: U users, each one stream of {first['contacts']} contacts{quiet} and a "
             f"ping every {first['period_s']:g} s; measured over the second of two periods "
             "(CPU: that window)")
    verdict = []
    for t in targets:
        p = results.get(t, {}).get(scenario)
        if p and "runs" in p:
            best = p["max_users_p99_under_50ms"]
            note = ("no larger size measured" if p["max_users_is_lower_bound"]
                    else f"failed at {p['first_failing_users']:,}")
            verdict.append(f"  {t}: {'≥' if p['max_users_is_lower_bound'] else ''}{best:,} ({note})")
    return "\n".join([title, *lines, "largest U with p99 < 50 ms, nothing lost, every stream open:",
                      *verdict])


def client_warning(results: dict[str, dict[str, dict]]) -> str | None:
    """A warning when the (single-threaded) load client used ~a whole core in a window."""
    hot = [f"{t} {label}" for t, scenarios in results.items() for label, r in _windows(scenarios)
           if r.get("client_saturated")]
    if not hot:
        return None
    return ("WARNING: the load client used 90% of a core or more in " + ", ".join(hot)
            + ": it may have been the bottleneck there, not the server.")
