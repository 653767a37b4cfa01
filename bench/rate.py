"""Rate-limit accuracy: configured rate against achieved rate, and the busiest windows
against the promise of at most burst + rate * t requests in any t seconds."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy.config import RateLimitConfig
from proxy.limits import RateLimit
from proxy.state.local import LocalState

WINDOWS = (0.01, 0.1, 1.0)
# The timeline kept for bench/charts.py: arrivals per 10 ms from the first one.
BIN = 0.01


def run(directory: Path) -> dict[str, Any]:
    """Scenario 5: the limit stage alone at 1,000/s and 10,000/s, then the proxy saturated
    by wrk (10,000/s by two workers sharing the limit)."""
    accuracy: dict[str, Any] = {}
    for configured in (1000, 10000):
        burst = configured * 0.05  # 50 ms of traffic: well above the loop's timer resolution
        accuracy[f"limiter_{configured}"] = asyncio.run(limiter_only(configured, burst, 3.0))
    for configured, workers in ((1000, 1), (10000, 2)):
        accuracy[f"proxy_{configured}"] = through_proxy_wrk(
            configured, configured * 0.05, 5.0, workers, directory
        )
    return accuracy


def worst_windows(times: Sequence[float], rate: float, burst: float) -> dict[str, float]:
    """For each window length, the busiest window's count over burst + rate * t (<= 1 holds)."""
    ordered = sorted(times)
    out = {}
    for window in WINDOWS:
        most, lo = 0, 0
        for hi, t in enumerate(ordered):
            while t - ordered[lo] > window:
                lo += 1
            most = max(most, hi - lo + 1)
        out[f"{window:g}s"] = round(most / (burst + rate * window), 4)
    return out


def per_bin(times: Sequence[float]) -> str:
    """Arrivals per :data:`BIN` seconds from the first arrival, as counts separated by
    spaces: a line of latest.json instead of thousands of them."""
    ordered = sorted(times)
    counts = [0] * (int((ordered[-1] - ordered[0]) / BIN) + 1)
    for t in ordered:
        counts[int((t - ordered[0]) / BIN)] += 1
    return " ".join(map(str, counts))


def achieved(times: Sequence[float], burst: float) -> float:
    """Sustained rate of a saturated limit: arrivals after the first half second (when the
    initial burst is long over) per second. ``burst`` is kept for the callers' records."""
    ordered = sorted(times)
    start = ordered[0] + 0.5
    steady = [t for t in ordered if t >= start]
    return (len(steady) - 1) / (steady[-1] - steady[0])


async def limiter_only(rate: float, burst: float, seconds: float) -> dict[str, Any]:
    """The limit stage alone, in one event loop: what the proxy admits."""
    config = RateLimitConfig(rate=rate, burst=burst, max_wait=3600)
    limit = RateLimit("bench", config, LocalState().capacity("bench", config))
    admitted: list[float] = []
    deadline = time.monotonic() + seconds

    # Steady workers, like clients keeping connections busy: creating tens of thousands of
    # waiters at once would block the loop and waste bucket capacity nobody could take.
    async def worker() -> None:
        while time.monotonic() < deadline:
            await limit.acquire()
            admitted.append(time.monotonic())

    await asyncio.gather(*(worker() for _ in range(256)))
    return {
        "configured": rate,
        "achieved": round(achieved(admitted, burst), 1),
        "ratio": round(achieved(admitted, burst) / rate, 4),
        "worst_window": worst_windows(admitted, rate, burst),
        "requests": len(admitted),
        "burst": burst,
        "per_10ms": per_bin(admitted),
    }


def through_proxy_wrk(
    rate: float, burst: float, seconds: float, workers: int, directory: Path
) -> dict[str, Any]:
    """A proxy saturated by wrk in front of a recording upstream (for rates an asyncio load
    generator cannot produce); ``workers`` processes share the limit."""
    from . import wrk
    from .procs import Proxy, python_server

    with python_server("-m", "bench.upstream", "--port", "0", "--raw") as (_, info):
        upstream = f"http://127.0.0.1:{info['port']}"
        config = directory / f"rate_{rate:g}.toml"
        config.write_text(
            f'[[routes]]\nprefix = "/api"\nupstream = "{upstream}"\n'
            f"rate_limit = {{ rate = {rate}, burst = {burst}, max_wait = 30 }}\n"
        )
        extra = ("--log-level", "warning", "--workers", str(workers))
        with Proxy(config, directory / f"rate_{rate:g}.log", *extra) as proxy:
            wrk.run(f"{proxy.url}/api/warm", 8, 1.0)
            time.sleep(2 * burst / rate + 0.5)  # let the bucket drain
            _arrivals(upstream)
            load = wrk.run(f"{proxy.url}/api/x", 128, seconds, threads=1, timeout=30)
            times = _arrivals(upstream)
    rate_seen = achieved(times, burst)
    return {
        "configured": rate,
        "achieved": round(rate_seen, 1),
        "ratio": round(rate_seen / rate, 4),
        "worst_window": worst_windows(times, rate, burst),
        "requests": len(times),
        "workers": workers,
        "errors": sum(load["errors"].values()) + load["non_2xx"],
        "burst": burst,
        "per_10ms": per_bin(times),
    }


def _arrivals(upstream: str) -> list[float]:
    import urllib.request

    with urllib.request.urlopen(f"{upstream}/-/arrivals", timeout=30) as response:  # noqa: S310
        return list(json.load(response))
