"""The headline figures (ratios measured in one run, against the issue's targets) and the
markdown table ``make bench`` prints and writes."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any


def _per_round(
    runs_a: list[dict[str, Any]], runs_b: list[dict[str, Any]], key: str, op: str
) -> float:
    """Median over rounds of a/b or a-b: each round's pair ran minutes apart at most."""
    values: list[float] = [
        a[key] / b[key] if op == "/" else a[key] - b[key]
        for a, b in zip(runs_a, runs_b, strict=True)
    ]
    return round(statistics.median(values), 3)


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures of the scenarios that ran (``--only`` runs one)."""
    out: dict[str, Any] = {}
    if "throughput" in results:
        out.update(_single(results))
    if "fleet" in results:
        out.update(_fleet_headline(results["fleet"]))
    return out


def _single(results: dict[str, Any]) -> dict[str, Any]:
    t = results["throughput"]
    runs = {name: row["runs"] for name, row in t.items()}
    out: dict[str, Any] = {
        "proxy_cpu_us_per_request": t["proxy_c64"]["cpu_us_per_request"],
        "proxy_workers_2_cpu_us_per_request": t["proxy_workers_2_c64"]["cpu_us_per_request"],
        "nginx_cpu_us_per_request": t["nginx_proxy_c64"]["cpu_us_per_request"],
        "cpu_ratio_vs_nginx": _per_round(
            runs["proxy_c64"], runs["nginx_proxy_c64"], "cpu_us_per_request", "/"
        ),
        "rps_ratio_vs_nginx": _per_round(runs["proxy_c64"], runs["nginx_proxy_c64"], "rps", "/"),
        "aiohttp_cpu_us_per_request": t["aiohttp_proxy_c64"]["cpu_us_per_request"],
        "cpu_ratio_vs_aiohttp": _per_round(
            runs["proxy_c64"], runs["aiohttp_proxy_c64"], "cpu_us_per_request", "/"
        ),
        "rps_ratio_vs_aiohttp": _per_round(
            runs["proxy_c64"], runs["aiohttp_proxy_c64"], "rps", "/"
        ),
        "proxy_rps": t["proxy_c64"]["rps"],
        "proxy_workers_2_rps": t["proxy_workers_2_c64"]["rps"],
        "added_p50_ms": _per_round(runs["proxy_c8"], runs["direct_c8"], "p50_ms", "-"),
        "added_p50_ms_workers_2": _per_round(
            runs["proxy_workers_2_c8"], runs["direct_c8"], "p50_ms", "-"
        ),
        "access_log_cpu_us_per_request": _per_round(
            runs["proxy_c64"], runs["proxy_no_access_log_c64"], "cpu_us_per_request", "-"
        ),
        "access_log_cpu_ratio": _per_round(
            runs["proxy_c64"], runs["proxy_no_access_log_c64"], "cpu_us_per_request", "/"
        ),
        "rate_accuracy": {
            name: row["ratio"] for name, row in results["rate_accuracy_detail"].items()
        },
        "stream_rss_growth_mb": results["streaming"]["rss_growth_mb"],
        "many_connections_errors": results["many_connections"]["errors"],
        "many_connections_p99_ms": results["many_connections"]["p99_ms"],
        "many_connections_rss_growth_mb": results["many_connections"]["rss_growth_mb"],
    }
    counted = results.get("instructions", {})
    out["baseline"] = results.get("baseline")
    out["instructions_per_request"] = counted.get("proxy")
    if "ratio" in counted:
        out["baseline_instructions_per_request"] = counted["baseline"]
        out["instructions_ratio_vs_baseline"] = counted["ratio"]
    if "proxy_baseline_c64" in t:
        out["baseline_cpu_us_per_request"] = t["proxy_baseline_c64"]["cpu_us_per_request"]
        out["cpu_ratio_vs_baseline"] = _per_round(
            runs["proxy_c64"], runs["proxy_baseline_c64"], "cpu_us_per_request", "/"
        )
    return out


def _range(row: dict[str, Any], key: str, digits: int = 1) -> str:
    if key not in row:
        return "-"
    lo, hi = row[f"{key}_range"]
    return f"{row[key]:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def table(results: dict[str, Any], charts: Mapping[str, str] | None = None) -> str:
    """The markdown of latest.md; ``charts``: PNGs written beside it (file name to
    caption), linked at the end."""
    parts = []
    if "throughput" in results:
        parts.append(_single_tables(results))
    if "fleet" in results:
        parts.append(_fleet_table(results))
    if charts:
        parts.append(
            "\n".join(
                ["### Charts", ""] + [f"![{caption}]({name})" for name, caption in charts.items()]
            )
        )
    return "\n\n".join(parts)


def _single_tables(results: dict[str, Any]) -> str:
    h = results
    lines = [
        "### Throughput (wrk -t1, medians of 3 interleaved runs, min-max in brackets)",
        "",
        "| scenario | conns | req/s | p50 ms | p99 ms | CPU µs/req | peak RSS MB | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["throughput"].items():
        scenario, _, conns = name.rpartition("_c")
        lines.append(
            f"| {scenario} | {conns} | {_range(row, 'rps', 0)} | {_range(row, 'p50_ms', 2)} | "
            f"{_range(row, 'p99_ms', 2)} | {_range(row, 'cpu_us_per_request')} | "
            f"{_range(row, 'peak_rss_mb')} | {row['errors']} |"
        )
    many = results["many_connections"]
    lines.append(
        f"| proxy, 1,000 connections (wrk -t2) | 1000 | {_range(many, 'rps', 0)} | "
        f"{_range(many, 'p50_ms', 2)} | {_range(many, 'p99_ms', 2)} | - | "
        f"growth {many['rss_growth_mb']} | {many['errors']} |"
    )
    s = results["streaming"]
    slow = results["slowloris"]
    rates = list(h["rate_accuracy"].values())
    worst = max(
        max(row["worst_window"].values()) for row in results["rate_accuracy_detail"].values()
    )
    lines += [
        "",
        "### Against the targets (ratios from the same run)",
        "",
        "| figure | measured | target |",
        "|---|---|---|",
        "| proxy CPU µs/request, every feature on | "
        f"{h['proxy_cpu_us_per_request']:.1f} | <= 100 |",
        f"| proxy CPU / nginx CPU per request | {h['cpu_ratio_vs_nginx']:.2f}x "
        f"(nginx {h['nginx_cpu_us_per_request']:.1f} µs) | <= 6x |",
        f"| proxy req/s / nginx req/s (c64) | {h['rps_ratio_vs_nginx']:.3f} | - |",
        f"| proxy CPU / aiohttp peer CPU per request | {h['cpu_ratio_vs_aiohttp']:.2f}x "
        f"(aiohttp {h['aiohttp_cpu_us_per_request']:.1f} µs) | - |",
        f"| proxy req/s / aiohttp peer req/s (c64) | {h['rps_ratio_vs_aiohttp']:.3f} | - |",
        f"| req/s with --workers 2 (c64) | {h['proxy_workers_2_rps']:.0f} | >= 10,000 |",
        f"| added p50 over direct at c8 | {h['added_p50_ms']:.2f} ms "
        f"(workers 2: {h['added_p50_ms_workers_2']:.2f} ms) | <= 1 ms |",
        f"| 1,000 connections: errors, p99 | {h['many_connections_errors']}, "
        f"{h['many_connections_p99_ms']:.0f} ms | 0, < 1,000 ms |",
        f"| RSS growth: 1 GB stream, 1,000 connections | {s['rss_growth_mb']} MB, "
        f"{h['many_connections_rss_growth_mb']} MB | <= 50 MB each |",
        f"| rate achieved/configured | {min(rates):.4f}-{max(rates):.4f} | 0.99-1.01 |",
        f"| worst window / (burst + rate*t) | {worst:.4f} | <= 1 |",
        "| p50 at c8 beside 1,000 slowloris connections | "
        f"{slow['p50_ms_with_slowloris']:.2f} ms (quiet {slow['p50_ms_quiet']:.2f} ms, "
        f"{slow['p50_ratio']}x) | normal traffic keeps its latency |",
        f"| access log CPU µs/request (on - off) | {h['access_log_cpu_us_per_request']:.1f} "
        f"({h['access_log_cpu_ratio']:.3f}x) | - |",
    ]
    if h.get("instructions_per_request") is not None:
        lines.append(
            f"| instructions per request (callgrind) | {h['instructions_per_request']:,} | - |"
        )
    if "instructions_ratio_vs_baseline" in h:
        lines.append(
            f"| instructions per request / baseline {h['baseline']} | "
            f"{h['instructions_ratio_vs_baseline']:.4f}x (baseline "
            f"{h['baseline_instructions_per_request']:,}) | <= 1.05x |"
        )
    if "cpu_ratio_vs_baseline" in h:
        lines.append(
            f"| proxy CPU / baseline {h['baseline']} CPU per request | "
            f"{h['cpu_ratio_vs_baseline']:.3f}x (baseline "
            f"{h['baseline_cpu_us_per_request']:.1f} µs) | "
            "noisy: the instruction count is the measure |"
        )
    lines += [
        "",
        f"### Streaming {s['bytes'] / (1 << 30):g} GiB through the proxy",
        "",
        "| direction | complete | seconds | MB/s |",
        "|---|---|---|---|",
    ]
    for direction in ("download", "upload", "upload_buffered"):
        row = s[direction]
        lines.append(f"| {direction} | {row['complete']} | {row['seconds']} | {row['mb_per_s']} |")
    lines += [
        "",
        "### Rate accuracy under saturation",
        "",
        "| scenario | configured/s | achieved/s | achieved/configured "
        "| worst window / (burst + rate*t) |",
        "|---|---|---|---|---|",
    ]
    for name, row in results["rate_accuracy_detail"].items():
        windows = ", ".join(f"{k}: {v}" for k, v in row["worst_window"].items())
        lines.append(
            f"| {name} | {row['configured']:g} | {row['achieved']:g} | {row['ratio']} | {windows} |"
        )
    return "\n".join(lines)


def _fleet_runs(fleet: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(topology, rate, backend, run) for every run that took place."""
    return [
        (topology, rate, backend, run)
        for topology, rates in fleet.items()
        if topology not in ("load", "redis_version")
        for rate, row in rates.items()
        for backend, run in row.items()
        if isinstance(run, dict) and "ratio" in run
    ]


def _fleet_headline(fleet: dict[str, Any]) -> dict[str, Any]:
    runs = _fleet_runs(fleet)
    shared = [run for _, _, backend, run in runs if backend == "redis"]
    out: dict[str, Any] = {
        "fleet_rate_accuracy": {f"{t}_{r}_{b}": run["ratio"] for t, r, b, run in runs},
        "fleet_cpu_ratio_redis_vs_local": {
            f"{topology}_{rate}": row["cpu_ratio_redis_vs_local"]
            for topology, rates in fleet.items()
            if topology not in ("load", "redis_version")
            for rate, row in rates.items()
            if "cpu_ratio_redis_vs_local" in row
        },
    }
    if shared:
        out["fleet_redis_worst_window"] = max(max(run["worst_window"].values()) for run in shared)
        out["fleet_redis_calls_per_s"] = {
            f"{t}_{r}": run.get("state_calls_per_s", run["redis_scripts_per_s"])
            for t, r, b, run in runs
            if b == "redis"
        }
    return out


def _expired(tokens: dict[str, float]) -> str:
    if not tokens.get("granted"):
        return "-"
    return f"{tokens.get('expired', 0):.0f} / {tokens['granted']:.0f}"


def _fleet_table(results: dict[str, Any]) -> str:
    fleet = results["fleet"]
    members = {"processes": "2 x serve", "workers_2": "2 x serve --workers 2"}
    lines = [
        f"### Fleet: two members, one limit, load split 80/20 (Redis {fleet['redis_version']})",
        "",
        "local: each member configured with half of the limit (a static split); redis: every",
        "member with the whole limit, shared through Redis. Connections per member and the",
        "pause of each between requests: "
        + "; ".join(
            f"{rate}/s: {'+'.join(map(str, row['connections']))} connections, {row['pace_ms']} ms"
            for rate, row in fleet["load"].items()
        )
        + f" (at most {max(row['most_offered'] for row in fleet['load'].values())}x the "
        "limit offered). Both fleets run side by side, by turns: Redis's figures in a local "
        "row are the idle redis fleet's. Machine busy: both cores' busy share during the run "
        "(near 1: the machine, not the limit, set the pace).",
        "",
        "| members | configured/s | backend | achieved/s | achieved/configured "
        "| req/s per member | worst window / (burst + rate*t) | CPU µs/req "
        "| Redis calls/s (members) | call ms | Redis scripts / commands per s "
        "| Redis CPU µs/req | lease tokens expired / granted | machine busy | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for topology, rate, backend, run in _fleet_runs(fleet):
        windows = ", ".join(f"{k}: {v}" for k, v in run["worst_window"].items())
        lines.append(
            f"| {members.get(topology, topology)} | {rate} | {backend} | {run['achieved']:g} | "
            f"{run['ratio']} | {' / '.join(f'{x:.0f}' for x in run['members_rps'])} | "
            f"{windows} | {run['cpu_us_per_request']} | {run.get('state_calls_per_s', '-')} | "
            f"{run.get('state_call_ms', '-')} | "
            f"{run['redis_scripts_per_s']:.0f} / {run['redis_commands_per_s']:.0f} | "
            f"{run['redis_cpu_us_per_request']} | {_expired(run.get('lease_tokens', {}))} | "
            f"{run.get('machine_busy', '-')} | "
            f"{run['errors']} |"
        )
    failed = {
        members.get(topology, topology): row["redis"]["error"].strip().splitlines()[-1:]
        for topology, rates in fleet.items()
        if topology not in ("load", "redis_version")
        for row in rates.values()
        if "error" in row.get("redis", {})
    }
    for topology, last_line in failed.items():
        lines.append(f"| {topology} | - | redis | did not start: {' '.join(last_line)} |")
    h = results
    shared = [run for _, _, backend, run in _fleet_runs(fleet) if backend == "redis"]
    cpu = h["fleet_cpu_ratio_redis_vs_local"]
    lines += ["", "| figure (redis backend) | measured | target |", "|---|---|---|"]
    if shared:
        ratios = [run["ratio"] for run in shared]
        lines.append(
            f"| fleet achieved/configured | {min(ratios):.4f}-{max(ratios):.4f} | 0.98-1.0 |"
        )
        lines.append(
            f"| fleet worst window / (burst + rate*t) | {h['fleet_redis_worst_window']:.4f} "
            "| <= 1 |"
        )
        calls = ", ".join(f"{k}: {v:.0f}" for k, v in h["fleet_redis_calls_per_s"].items())
        lines.append(f"| Redis calls/s (members' count, else scripts run) | {calls} | - |")
    else:
        lines.append("| fleet achieved/configured | the redis backend did not run | 0.98-1.0 |")
    if cpu:
        lines.append(
            "| CPU per request, redis / local | "
            + ", ".join(f"{k}: {v:.3f}x" for k, v in cpu.items())
            + " | <= 1.10x |"
        )
    return "\n".join(lines)
