"""The charts ``make bench`` writes beside latest.md: rate accuracy over time and latency
percentiles, as PNG.

Drawn on matplotlib's ``Figure`` directly, never through pyplot: no global figure state and
no GUI backend to pick (saving a PNG renders with Agg), so it runs on a headless machine.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from matplotlib.figure import Figure

from .rate import BIN

RATE_CHART: Final = "rate_timeline.png"
LATENCY_CHART: Final = "latency_percentiles.png"
# The throughput rows drawn, in this order, and their names on the chart.
LATENCY_ROWS: Final = {
    "direct": "direct (no proxy)",
    "nginx_proxy": "nginx",
    "proxy": "proxy",
    "proxy_workers_2": "proxy --workers 2",
}
PERCENTILES: Final = ("p50", "p75", "p90", "p99")
_DPI: Final = 100


def rate_timeline(detail: Mapping[str, Any], path: Path, note: str = "") -> bool:
    """Every rate scenario that recorded its arrivals (``per_10ms``), a row each: arrivals
    per 10 ms against the bound for any 10 ms (burst + rate * 0.01), and arrivals since the
    first one less rate * t against burst (the promise burst + rate * t, with the steady
    part taken away so the margin shows). False, and nothing written, when none did."""
    rows = [(name, row) for name, row in detail.items() if "per_10ms" in row]
    if not rows:
        return False
    figure = Figure(figsize=(12, 2.8 * len(rows)), layout="constrained")
    figure.suptitle(f"Rate accuracy under saturation{note}", fontsize=11)
    axes = figure.subplots(len(rows), 2, squeeze=False)
    for (name, row), (per_bin, excess) in zip(rows, axes, strict=True):
        counts = [int(c) for c in row["per_10ms"].split()]
        rate, burst = float(row["configured"]), float(row["burst"])
        starts = [i * BIN for i in range(len(counts))]
        per_bin.step(starts, counts, where="post", linewidth=0.8, label="arrivals per 10 ms")
        per_bin.axhline(burst + rate * BIN, color="red", label="bound: burst + rate * 0.01 s")
        per_bin.axhline(rate * BIN, color="grey", linestyle="--", label="rate * 0.01 s")
        per_bin.set_title(f"{name}: {rate:g}/s, burst {burst:g}", loc="left", fontsize=10)
        per_bin.set_xlabel("seconds since the first arrival")
        per_bin.set_ylabel("arrivals")
        # Head-room over the bound, so the legend sits above the line it explains.
        per_bin.set_ylim(0, 1.4 * max(burst + rate * BIN, *counts))
        per_bin.legend(loc="upper right", fontsize=8)
        total, over = 0, []
        for i, count in enumerate(counts):
            total += count
            over.append(total - rate * (i + 1) * BIN)
        ends = [start + BIN for start in starts]
        excess.plot(ends, over, linewidth=0.8, label="arrivals so far - rate * t")
        excess.axhline(burst, color="red", label="bound: burst")
        excess.set_title(
            f"achieved {row['achieved']:g}/s ({row['ratio']:g} of configured)",
            loc="left",
            fontsize=10,
        )
        excess.set_xlabel("t: seconds since the first arrival")
        excess.set_ylabel("requests")
        low = min(0.0, *over)
        excess.set_ylim(low, burst + 0.5 * (max(burst, *over) - low))
        excess.legend(loc="upper right", fontsize=8)
    figure.savefig(path, dpi=_DPI)
    return True


def latency_percentiles(throughput: Mapping[str, Any], path: Path, note: str = "") -> bool:
    """p50 to p99 of direct, nginx and the proxy (each the median of the rounds, the bar
    from the lowest to the highest round), one panel per connection count. False, and
    nothing written, when none of those rows ran."""
    panels = sorted(
        {name.rpartition("_c")[2] for name in throughput},
        key=lambda conns: int(conns) if conns.isdigit() else 0,
    )
    panels = [c for c in panels if any(f"{row}_c{c}" in throughput for row in LATENCY_ROWS)]
    if not panels:
        return False
    figure = Figure(figsize=(12, 4.5), layout="constrained")
    figure.suptitle(
        f"Latency percentiles: median of the rounds, bars from lowest to highest{note}",
        fontsize=11,
    )
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    width = 0.8 / len(LATENCY_ROWS)
    for axis, conns in zip(axes, panels, strict=True):
        for i, (row_name, label) in enumerate(LATENCY_ROWS.items()):
            row = throughput.get(f"{row_name}_c{conns}")
            if row is None:
                continue
            runs = row["runs"]
            medians, low, high = [], [], []
            for p in PERCENTILES:
                values = [run[f"{p}_ms"] for run in runs]
                middle = statistics.median(values)
                medians.append(middle)
                low.append(middle - min(values))
                high.append(max(values) - middle)
            positions = [x + (i - (len(LATENCY_ROWS) - 1) / 2) * width for x in range(4)]
            axis.bar(positions, medians, width, yerr=[low, high], capsize=2, label=label)
        axis.set_xticks(range(len(PERCENTILES)), PERCENTILES)
        axis.set_yscale("log")
        axis.set_ylabel("ms (log scale)")
        axis.set_title(f"{conns} connections (wrk -t1)", loc="left", fontsize=10)
        axis.grid(axis="y", which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.savefig(path, dpi=_DPI)
    return True


def write(results: Mapping[str, Any], directory: Path) -> dict[str, str]:
    """The charts the results have data for, written into ``directory``: file name to
    caption, for latest.md to link."""
    written = {}
    detail = results.get("rate_accuracy_detail", {})
    if rate_timeline(detail, directory / RATE_CHART, _measured(results, "rate_accuracy_detail")):
        written[RATE_CHART] = "Rate accuracy: arrivals against burst + rate * t"
    throughput = results.get("throughput", {})
    if latency_percentiles(throughput, directory / LATENCY_CHART, _measured(results, "")):
        written[LATENCY_CHART] = "Latency percentiles: the proxy against nginx and direct"
    return written


def _measured(results: Mapping[str, Any], scenario: str) -> str:
    """When the scenario ran (alone, with --only, or in the whole run) and how busy the
    machine was, for a chart's title."""
    meta = results.get("meta", {})
    run = meta.get(f"{scenario}_run", meta) if scenario else meta
    if "when" not in run:
        return ""
    busy = (
        f", load average {run['load_average']:g} on {run['cpus']} CPUs"
        if "load_average" in run
        else ""
    )
    return f"\n(measured {run['when']}{busy})"
