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
]


def _fmt(fmt: str, value) -> str:
    return "-" if value is None else fmt.format(value)


def table(results: dict[str, dict[str, dict]], targets: list[str]) -> str:
    """results[target][scenario] = figures.  Ratios only against nchan, for the rest."""
    others = [t for t in targets if t != "nchan"]
    header = ["metric"] + targets + [f"{t}/nchan" for t in others if "nchan" in targets] + ["goal"]
    rows = [header]
    for label, scenario, key, goal, fmt in HEADLINES:
        values = {t: results.get(t, {}).get(scenario, {}).get(key) for t in targets}
        if all(v is None for v in values.values()):
            continue
        row = [label] + [_fmt(fmt, values[t]) for t in targets]
        if "nchan" in targets:
            base = values["nchan"]
            for t in others:
                v = values[t]
                row.append("-" if key == "lost" or v is None or not base else f"{v / base:.2f}")
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
        for scenario, r in results.get(t, {}).items():
            cells.append(f"{scenario} {r.get('server_cpu_s', 0):.2f}/{r.get('redis_cpu_s', 0):.2f}"
                         f"/{r.get('client_cpu_s', 0):.2f}/{r.get('other_cpu_s', 0):.2f}"
                         f" in {r.get('wall_s', 0):.2f}")
        lines.append(f"  {t}: " + "; ".join(cells))
    return "\n".join(lines)


def noise_warning(results: dict[str, dict[str, dict]], limit: float = 0.2) -> str | None:
    """A warning when other processes used more than `limit` cores in some window."""
    worst, where = 0.0, ""
    for t, scenarios in results.items():
        for scenario, r in scenarios.items():
            if r.get("wall_s") and r.get("other_cpu_s", 0) >= 0.1:  # above /proc's tick noise
                cores = r["other_cpu_s"] / r["wall_s"]
                if cores > worst:
                    worst, where = cores, f"{t} {scenario}"
    if worst <= limit:
        return None
    return (f"WARNING: other processes used up to {worst:.2f} of the 2 cores during a measured "
            f"window ({where}): these figures are disturbed; rerun on a quiet machine.")
