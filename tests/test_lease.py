"""One rate limit for the fleet (proxy/state/gcra.py, proxy/state/lease.py)."""

from __future__ import annotations

import asyncio

import pytest

from proxy.config import RateLimitConfig
from proxy.errors import StateBackendError
from proxy.limits import RateLimit


class Failing:
    """A Capacity that has no slots, and fails whoever asks once told to."""

    def __init__(self) -> None:
        self.fail = asyncio.Event()
        self.asked = 0

    def has_capacity(self) -> bool:
        return False

    async def acquire(self) -> None:
        self.asked += 1
        await self.fail.wait()
        raise StateBackendError("route /v")

    async def close(self) -> None:
        return None


async def test_a_capacity_that_fails_fails_everyone_in_line() -> None:
    """When the capacity raises, every request waiting in line gets that error at once
    (none is left to time out), and the next request asks the capacity again."""
    capacity = Failing()
    limit = RateLimit("route /v", RateLimitConfig(rate=10, burst=1, max_wait=60), capacity)
    waiters = [asyncio.create_task(limit.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    capacity.fail.set()
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 1)
    assert all(isinstance(r, StateBackendError) for r in results)
    assert limit.status()["waiting"] == 0
    with pytest.raises(StateBackendError):
        await asyncio.wait_for(limit.acquire(), 1)
    assert capacity.asked == 2
    await limit.close()
