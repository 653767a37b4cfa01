"""The proxy never makes a vendor's throttling worse than calling it directly: nginx's
limit_req as the vendor, the issue's scenario (4 req/s allowed, Retry-After: 1; 16
requests sent at 8/s on a route without rate_limit)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from .conftest import ProxyFactory
from .nginx_ref import ReferenceNginx

REQUESTS = 16
SEND_RATE = 8.0  # requests a second, twice what the vendor admits
VENDOR_RATE = 4


@pytest.fixture
async def vendor(tmp_path: Path) -> AsyncIterator[ReferenceNginx]:
    nginx = ReferenceNginx(tmp_path / "vendor")
    await nginx.vendor(VENDOR_RATE, retry_after=1)
    yield nginx
    nginx.stop()


async def _burst(base: str) -> list[tuple[int, int, float]]:
    """REQUESTS requests at SEND_RATE: (status, attempts the proxy reported, seconds)."""
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> tuple[int, int, float]:
            await asyncio.sleep(i / SEND_RATE)
            started = time.monotonic()
            async with session.get(f"{base}/item/{i}") as response:
                await response.read()
                attempts = int(response.headers.get("X-Proxy-Attempts", "1"))
                return response.status, attempts, time.monotonic() - started

        return await asyncio.gather(*(one(i) for i in range(REQUESTS)))


# About 19 s of real time: through the proxy the burst waits out the vendor's 429s and is
# paced at the rate learned from them; a request may take up to retry.max_wait (30 s).
@pytest.mark.timeout(90)
async def test_fewer_429s_through_the_proxy_than_direct(
    vendor: ReferenceNginx, make_proxy: ProxyFactory
) -> None:
    """Direct, about half the requests get 429; through the proxy none does: every one is
    answered 200 within retry.max_wait, paced at the rate learned from the first 429, and
    X-Proxy-Attempts adds up to what the vendor received."""
    direct = await _burst(f"http://127.0.0.1:{vendor.port}")
    direct_429 = sum(1 for status, _, _ in direct if status == 429)
    assert direct_429 >= REQUESTS // 4  # the vendor really throttles this load
    await asyncio.sleep(1.5)  # the vendor's bucket drains
    seen_direct = len(vendor.access_log())

    proxy = await make_proxy(
        f'[[routes]]\nprefix = "/v"\nupstream = "http://127.0.0.1:{vendor.port}"\n'
    )
    through = await _burst(f"{proxy}/v")
    statuses = [status for status, _, _ in through]
    assert statuses.count(429) <= direct_429
    assert statuses == [200] * REQUESTS
    assert max(seconds for _, _, seconds in through) < 30  # retry.max_wait
    attempts = sum(attempts for _, attempts, _ in through)
    async with asyncio.timeout(5):  # nginx logs a request just after its answer is out
        while len(vendor.access_log()) - seen_direct < attempts:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # and never a line more
    assert len(vendor.access_log()) - seen_direct == attempts

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxy}/-/status") as response:
            learned = json.loads(await response.read())["routes"]["/v"]["learned_rate"]
        async with session.get(f"{proxy}/-/metrics") as response:
            metrics = await response.text()
    assert learned["throttles"] >= 1
    assert learned["throttled_at_rate"] is not None
    if learned["active"]:
        assert 'proxy_route_learned_rate{route="/v"}' in metrics
