"""Throughput, latency and CPU per request: direct, nginx as a proxy, a bare aiohttp proxy,
and ours.

Every server is started once; the scenarios then take turns (round 1 of each, round 2 of
each, ...) so a noisy moment on this shared machine spreads over all of them rather than
spoiling one. Medians are reported with their min-max.
"""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from . import wrk
from .procs import Proxy, cpu_seconds, memory_kib, python_server

ROUNDS = 3
SECONDS = 5.0
CONNECTIONS = (64, 8)


def proxy_config(
    directory: Path, name: str, upstream_port: int, token_url: str, more_routes: str = ""
) -> Path:
    """Every feature on: a token from the token manager, a rate limit too high to bind,
    the retry machinery (default), the access log and metrics (always on)."""
    path = directory / f"{name}.toml"
    path.write_text(
        f"""
[[routes]]
prefix = "/api"
upstream = "http://127.0.0.1:{upstream_port}"
auth = "bench"
rate_limit = {{ rate = 1000000, burst = 100000, max_wait = 5 }}
{more_routes}
[auth.bench]
type = "client_credentials"
token_url = "{token_url}"
client_id = "sandbox-travtus-client"
client_secret = "sandbox-travtus-secret"
"""
    )
    return path


def measure(url: str, pid: int | None, connections: int) -> dict[str, Any]:
    before = cpu_seconds(pid) if pid is not None else 0.0
    result = wrk.run(url, connections, SECONDS)
    if pid is not None:
        used = cpu_seconds(pid) - before
        result["cpu_us_per_request"] = used / max(1, result["requests"]) * 1e6
        result["peak_rss_mb"] = memory_kib(pid, "VmHWM") / 1024
    return result


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and [min, max] of each figure over the rounds."""
    out: dict[str, Any] = {"runs": runs}
    for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "peak_rss_mb"):
        values = [run[key] for run in runs if key in run]
        if values:
            out[key] = round(statistics.median(values), 3)
            out[f"{key}_range"] = [round(min(values), 3), round(max(values), 3)]
    out["errors"] = sum(sum(run["errors"].values()) + run["non_2xx"] for run in runs)
    return out


def run_all(
    directory: Path,
    upstream_port: int,
    nginx_proxy: tuple[int, int],
    token_url: str,
    baseline: Path | None = None,
) -> dict[str, Any]:
    """Scenarios 1-4, with the bare aiohttp proxy (``bench.aiohttp_peer``) beside nginx as
    the peer that runs in the interpreter as ours does (and the proxy without its access
    log, for the log's cost; and, with ``baseline``, the proxy of that checkout, for a
    before/after in the same rounds)."""
    nginx_pid, nginx_port = nginx_proxy
    config = proxy_config(directory, "full", upstream_port, token_url)
    with ExitStack() as stack:
        peer_upstream = f"http://127.0.0.1:{upstream_port}"
        peer, announced = stack.enter_context(
            python_server("-m", "bench.aiohttp_peer", "--port", "0", "--upstream", peer_upstream)
        )
        one = stack.enter_context(Proxy(config, directory / "proxy1.log"))
        two = stack.enter_context(Proxy(config, directory / "proxy2.log", "--workers", "2"))
        quiet = stack.enter_context(
            Proxy(config, directory / "quiet.log", "--log-level", "warning")
        )
        targets: dict[str, tuple[str, int | None]] = {
            "direct": (f"http://127.0.0.1:{upstream_port}/x", None),
            "nginx_proxy": (f"http://127.0.0.1:{nginx_port}/x", nginx_pid),
            "aiohttp_proxy": (f"http://127.0.0.1:{announced['port']}/x", peer.pid),
            "proxy": (f"{one.url}/api/x", one.pid),
            "proxy_workers_2": (f"{two.url}/api/x", two.pid),
            "proxy_no_access_log": (f"{quiet.url}/api/x", quiet.pid),
        }
        if baseline is not None:
            before = stack.enter_context(Proxy(config, directory / "baseline.log", source=baseline))
            targets["proxy_baseline"] = (f"{before.url}/api/x", before.pid)
        for url, _ in targets.values():  # warm pools and tokens, unmeasured
            wrk.run(url, 8, 1.0)
        runs: dict[str, list[dict[str, Any]]] = {}
        for _ in range(ROUNDS):
            for name, (url, pid) in targets.items():
                for connections in CONNECTIONS:
                    runs.setdefault(f"{name}_c{connections}", []).append(
                        measure(url, pid, connections)
                    )
    return {name: summarise(result) for name, result in runs.items()}


def many_connections(directory: Path, upstream_port: int, token_url: str) -> dict[str, Any]:
    """Scenario 7: 1,000 concurrent connections on a fresh proxy: errors, p99, RSS growth."""
    config = proxy_config(directory, "many", upstream_port, token_url)
    rounds = []
    with Proxy(config, directory / "many.log") as proxy:
        wrk.run(f"{proxy.url}/api/x", 8, 1.0)
        time.sleep(0.5)
        before = memory_kib(proxy.pid)
        for _ in range(ROUNDS):
            rounds.append(wrk.run(f"{proxy.url}/api/x", 1000, 10.0, threads=2, timeout=2.0))
        growth = (memory_kib(proxy.pid, "VmHWM") - before) / 1024
    out = summarise(rounds)
    out["rss_growth_mb"] = round(growth, 1)
    return out


def slowloris(directory: Path, upstream_port: int, token_url: str) -> dict[str, Any]:
    """Normal traffic's latency (wrk -c8) without, then with, 1,000 slowloris connections
    trickling a head into the same proxy: the ratio shows what they cost the others."""
    import subprocess
    import sys

    config = proxy_config(directory, "slowloris", upstream_port, token_url)
    with Proxy(config, directory / "slowloris.log", "--log-level", "warning") as proxy:
        url = f"{proxy.url}/api/x"
        wrk.run(url, 8, 1.0)
        quiet = wrk.run(url, 8, SECONDS)
        port = int(proxy.url.rsplit(":", 1)[1])
        loris = subprocess.Popen(  # noqa: S603
            [
                sys.executable,
                "-m",
                "bench.slowloris",
                "--port",
                str(port),
                "--connections",
                "1000",
                "--seconds",
                str(SECONDS + 4),
            ],
            stdout=subprocess.PIPE,
        )
        try:
            assert loris.stdout is not None
            loris.stdout.readline()  # all connections open
            busy = wrk.run(url, 8, SECONDS)
            loris.wait(SECONDS + 30)
        finally:
            if loris.poll() is None:
                loris.kill()
    return {
        "p50_ms_quiet": quiet["p50_ms"],
        "p50_ms_with_slowloris": busy["p50_ms"],
        "p99_ms_quiet": quiet["p99_ms"],
        "p99_ms_with_slowloris": busy["p99_ms"],
        "p50_ratio": round(busy["p50_ms"] / quiet["p50_ms"], 2),
        "errors_with_slowloris": sum(busy["errors"].values()) + busy["non_2xx"],
    }
