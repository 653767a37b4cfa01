"""Rate-limit accuracy: configured rate against achieved rate, and the busiest windows
against the promise of at most burst + rate * t requests in any t seconds."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from proxy.config import RateLimitConfig
from proxy.limits import RateLimit

WINDOWS = (0.01, 0.1, 1.0)


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


def achieved(times: Sequence[float], burst: float) -> float:
    """Sustained rate of a saturated leaky bucket that started empty."""
    ordered = sorted(times)
    return (len(ordered) - burst) / (ordered[-1] - ordered[0])


async def limiter_only(rate: float, burst: float, seconds: float) -> dict[str, Any]:
    """The limit stage alone, in one event loop: what the proxy admits."""
    limit = RateLimit("bench", RateLimitConfig(rate=rate, burst=burst, max_wait=3600))
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
    }


async def _spawn(*args: str) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    assert process.stdout is not None
    async with asyncio.timeout(20):
        while True:
            line = await process.stdout.readline()
            if not line:
                raise RuntimeError(f"{args} exited before it was ready")
            if line.startswith(b"{"):
                event = json.loads(line)
                if "port" in event or event.get("event") == "proxy_started":
                    return process, event


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        await process.wait()


async def through_proxy(rate: float, burst: float, seconds: float,
                        concurrency: int = 64) -> dict[str, Any]:
    """A proxy process in front of a recording upstream, saturated by a load generator."""
    upstream, info = await _spawn("-m", "bench.upstream", "--port", "0")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "routes.toml"
        config.write_text(
            f'[[routes]]\nprefix = "/api"\nupstream = "http://127.0.0.1:{info["port"]}"\n'
            f"rate_limit = {{ rate = {rate}, burst = {burst}, max_wait = 30 }}\n"
        )
        proxy, started = await _spawn("-m", "proxy", "serve", "--config", str(config),
                                      "--port", "0")
        try:
            base = started["addresses"][0]
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=connector) as client:
                # Warm the pools, then let the bucket drain, as in the test.
                await asyncio.gather(*(_get(client, f"{base}/api/warm") for _ in range(64)))
                await asyncio.sleep(2 * burst / rate + 0.2)
                async with client.get(f"http://127.0.0.1:{info['port']}/-/arrivals") as r:
                    await r.read()
                deadline = time.monotonic() + seconds
                errors = 0

                async def worker() -> None:
                    nonlocal errors
                    while time.monotonic() < deadline:
                        if await _get(client, f"{base}/api/x") != 200:
                            errors += 1

                await asyncio.gather(*(worker() for _ in range(concurrency)))
                async with client.get(f"http://127.0.0.1:{info['port']}/-/arrivals") as r:
                    times = await r.json()
        finally:
            await _stop(proxy)
            await _stop(upstream)
    rate_seen = achieved(times, burst)
    return {
        "configured": rate,
        "achieved": round(rate_seen, 1),
        "ratio": round(rate_seen / rate, 4),
        "worst_window": worst_windows(times, rate, burst),
        "requests": len(times),
        "errors": errors,
    }


async def _get(client: aiohttp.ClientSession, url: str) -> int:
    async with client.get(url) as response:
        await response.read()
        return response.status
