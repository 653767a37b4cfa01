"""Scenario 6: a 1 GB download and a 1 GB upload through the proxy (streamed, and buffered
whole on disk first as chunked uploads are by default): throughput, and how much the
proxy's resident memory grows (it must never hold a body in memory)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp

from .procs import Proxy, memory_kib
from .throughput import proxy_config

CHUNK = 256 * 1024


def config(directory: Path, nginx_port: int, sink_port: int, token_url: str) -> Path:
    """The throughput scenarios' config (downloads from nginx) plus a route to the sink."""
    sink = f'upstream = "http://127.0.0.1:{sink_port}"\nauth = "bench"\n'
    # /up streams a chunked upload as it arrives; /up-buffered reads it whole first (the
    # default, spooled to disk past 64 KiB), so the report shows what buffering costs.
    upload = (
        f'[[routes]]\nprefix = "/up"\n{sink}request_buffering = false\n'
        f'[[routes]]\nprefix = "/up-buffered"\n{sink}'
    )
    return proxy_config(directory, "stream", nginx_port, token_url, upload)


async def _download(url: str) -> int:
    received = 0
    timeout = aiohttp.ClientTimeout(total=600)
    async with (
        aiohttp.ClientSession(auto_decompress=False) as client,
        client.get(url, timeout=timeout) as response,
    ):
        async for chunk in response.content.iter_chunked(CHUNK):
            received += len(chunk)
    return received


async def _upload(url: str, size: int) -> int:
    block = b"\x5a" * CHUNK

    async def body() -> AsyncIterator[bytes]:
        left = size
        while left > 0:
            piece = block if left >= CHUNK else block[:left]
            left -= len(piece)
            yield piece

    timeout = aiohttp.ClientTimeout(total=600)
    async with (
        aiohttp.ClientSession() as client,
        client.post(url, data=body(), timeout=timeout) as response,
    ):
        answer = await response.json()
    return int(answer["bytes"])


def run(
    directory: Path, nginx_port: int, sink_port: int, token_url: str, size: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"bytes": size}
    with Proxy(
        config(directory, nginx_port, sink_port, token_url), directory / "stream.log"
    ) as proxy:
        asyncio.run(_download(f"http://127.0.0.1:{nginx_port}/big/file"))  # page cache warm
        baseline = memory_kib(proxy.pid)
        jobs: list[tuple[str, Callable[[], Coroutine[Any, Any, int]]]] = [
            ("download", lambda: _download(f"{proxy.url}/api/big/file")),
            ("upload", lambda: _upload(f"{proxy.url}/up/sink", size)),
            ("upload_buffered", lambda: _upload(f"{proxy.url}/up-buffered/sink", size)),
        ]
        for name, job in jobs:
            began = time.perf_counter()
            moved = asyncio.run(job())
            elapsed = time.perf_counter() - began
            out[name] = {
                "complete": moved == size,
                "seconds": round(elapsed, 2),
                "mb_per_s": round(size / elapsed / 1e6, 1),
            }
        out["rss_before_mb"] = round(baseline / 1024, 1)
        out["peak_rss_mb"] = round(memory_kib(proxy.pid, "VmHWM") / 1024, 1)
        out["rss_growth_mb"] = round(out["peak_rss_mb"] - out["rss_before_mb"], 1)
    return out
