"""A fake clock for the policy layer (proxy/clock.py's Clock): hours of limits, pauses and
retries run in milliseconds, and nothing sleeps for real."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Coroutine
from typing import Any


class Clock:
    """A timeline that moves only when every task waits: sleepers wake in time order."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._slept = 0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        # Sleepers due at the same time wake in the order they went to sleep.
        self._slept += 1
        heapq.heappush(self._sleepers, (self.now + seconds, self._slept, future))
        await future

    async def run(self, *coroutines: Coroutine[Any, Any, object]) -> None:
        """Run these to completion, moving time to the next wake-up whenever all wait."""
        tasks = [asyncio.ensure_future(c) for c in coroutines]
        while not all(t.done() for t in tasks):
            for _ in range(10):
                await asyncio.sleep(0)  # let every runnable task reach its next wait
            if self._sleepers:
                wake, _, future = heapq.heappop(self._sleepers)
                if future.done():
                    continue  # its sleeper was cancelled: nobody wakes at that time
                self.now = max(self.now, wake)
                future.set_result(None)
        for task in tasks:
            task.result()
