"""Client-side rate limits: the upstream never sees more than it allows.

A limit of ``rate`` per ``per`` seconds with bursts of ``burst`` is aiolimiter's leaky
bucket of capacity ``burst`` draining ``rate / per`` a second: ``AsyncLimiter(burst,
burst * per / rate)``. Starting empty, it admits at most ``burst + rate * t`` requests in
any window of ``t`` seconds, which is the guarantee we promise upstreams.

aiolimiter orders its waiters by amount, then arrival, and lets a newcomer take capacity
ahead of a woken waiter; users waiting in line expect first come, first served. So waiters
queue on an asyncio.Lock (FIFO since Python 3.11) and only its holder waits inside the
limiter. A request whose place in line means a wait beyond ``max_wait`` is told at once
(429 with Retry-After) instead of after waiting for nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiolimiter import AsyncLimiter

from .config import RateLimitConfig
from .errors import RateLimitedError


class RateLimit:
    """One limit, shared by every request that passes it (a route, or an auth table)."""

    __slots__ = ("_config", "_limiter", "_line", "_rate", "_waiting", "name", "rejected")

    def __init__(self, name: str, config: RateLimitConfig) -> None:
        self.name = name
        self._config = config
        capacity = config.capacity
        self._limiter = AsyncLimiter(capacity, capacity * config.per / config.rate)
        self._rate = config.rate / config.per
        self._line = asyncio.Lock()
        self._waiting = 0
        self.rejected = 0

    async def acquire(self, deadline: float | None = None) -> float:
        """Take one slot, waiting in line if needed; return the seconds waited.

        Raises RateLimitedError when the wait would pass ``max_wait`` or ``deadline``
        (a time.monotonic() value), before anything is sent upstream.
        """
        limiter = self._limiter
        if self._waiting == 0 and limiter.has_capacity():
            await limiter.acquire()  # capacity is there: returns without suspending
            return 0.0
        budget = self._config.max_wait
        now = time.monotonic()
        if deadline is not None:
            budget = min(budget, deadline - now)
        # In a full bucket a slot frees every 1/rate seconds: everyone ahead, then us.
        expected = (self._waiting + 1) / self._rate
        if expected > budget:
            raise self._reject(expected)
        self._waiting += 1
        try:
            async with asyncio.timeout(budget), self._line:
                await limiter.acquire()
        except TimeoutError:
            raise self._reject((self._waiting + 1) / self._rate) from None
        finally:
            self._waiting -= 1
        return time.monotonic() - now

    def _reject(self, retry_after: float) -> RateLimitedError:
        self.rejected += 1
        return RateLimitedError(self.name, retry_after)

    def status(self) -> dict[str, Any]:
        config = self._config
        return {
            "rate": config.rate,
            "per": config.per,
            "burst": config.capacity,
            "max_wait": config.max_wait,
            "waiting": self._waiting,
            "has_capacity": self._waiting == 0 and self._limiter.has_capacity(),
            "rejected": self.rejected,
        }
