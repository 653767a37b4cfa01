"""The rate an upstream really admits, learned from its throttling.

A route without a configured rate limit (and one whose limit is set above what the vendor
admits today) only learns the vendor's rate from its 429s. Sending on at the old rate, or
releasing every request held by a pause in the same millisecond, earns more 429s than the
client would have got calling the vendor directly. So, as the AWS SDKs' adaptive retry
mode does: on a throttling answer the route's rate drops to BETA times the rate it was
sending at, requests are released no faster than that, and the rate grows back along a
cubic curve (CUBIC, RFC 9438) while the upstream keeps answering, never above the
route's configured rate limit. Once it has grown to twice the rate that was throttled
without another 429, the vendor's limit has clearly moved and pacing stops.

Pacing is a line, not a bucket: requests wait first come first served, and one task lets
the head go every 1/rate seconds at the rate of that moment, so a rate that grows (or is
cut again) applies to everyone still waiting, and a request whose client has gone frees
its turn. It costs nothing until the first 429, and nothing but a clock read when the
route is below its learned rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
from typing import Any, Final

from .clock import MONOTONIC, Clock
from .errors import RateLimitedError

BETA: Final = 0.7  # the rate kept after a throttle (CUBIC's multiplicative decrease)
SCALE: Final = 0.4  # CUBIC's C: how fast the rate grows back
MIN_RATE: Final = 0.5  # requests a second: never paced slower (as the AWS SDKs)
# Sending is measured in windows of this many seconds: the rate a throttle cuts from.
_WINDOW: Final = 0.5


class AdaptiveRate:
    """One route's learned rate and the line that paces requests to it."""

    __slots__ = (
        "_clock",
        "_count",
        "_dispatcher",
        "_joined",
        "_k",
        "_last_rate",
        "_line",
        "_next",
        "_window_start",
        "active",
        "ceiling",
        "last_throttle",
        "name",
        "throttles",
        "w_max",
    )

    def __init__(
        self,
        name: str,
        ceiling: float | None = None,
        clock: Clock = MONOTONIC,
    ) -> None:
        self.name = name
        self.ceiling = ceiling  # requests a second: the configured limit, if any
        self._clock = clock
        self.active = False
        self.throttles = 0
        self.w_max = 0.0  # the rate that was throttled
        self._k = 0.0  # seconds after a throttle until the rate is back at w_max
        self.last_throttle = -math.inf
        self._next = 0.0  # when the next request may leave
        # Requests waiting for their turn, oldest first (by arrival at the proxy, so a
        # retry goes before requests that came after it); one task releases them at the
        # rate of the moment (it follows the rate as it grows or is cut).
        self._line: list[tuple[float, int, asyncio.Future[None]]] = []
        self._joined = 0
        self._dispatcher: asyncio.Task[None] | None = None
        now = clock.monotonic()
        self._window_start = now
        self._count = 0
        self._last_rate = 0.0

    def sent(self, now: float) -> None:
        """An attempt went upstream (counted to know the rate a throttle cuts from)."""
        if now - self._window_start >= _WINDOW:
            self._last_rate = self._count / (now - self._window_start)
            self._window_start = now
            self._count = 0
        self._count += 1

    def sending_rate(self, now: float) -> float:
        """Requests a second sent lately: the last window's, or this one's if higher."""
        current = self._count / max(now - self._window_start, _WINDOW)
        return max(current, self._last_rate)

    def _floor(self) -> float:
        return MIN_RATE if self.ceiling is None else min(MIN_RATE, self.ceiling)

    def rate(self, now: float | None = None) -> float | None:
        """The learned rate, requests a second; None while pacing is off."""
        if not self.active:
            return None
        now = self._clock.monotonic() if now is None else now
        rate = SCALE * (now - self.last_throttle - self._k) ** 3 + self.w_max
        grown = rate >= 2 * self.w_max or (self.ceiling is not None and rate >= self.ceiling)
        if grown and not self._line:
            self.active = False  # grown past the throttled rate (or to the limit): done
            return None
        if self.ceiling is not None:
            rate = min(rate, self.ceiling)
        return max(self._floor(), rate)

    def throttled(self, sent_at: float) -> None:
        """The upstream throttled an attempt sent at ``sent_at``: cut the rate, once per
        throttling event (answers to attempts sent before the last cut add nothing: they
        left at the rate already cut)."""
        if sent_at < self.last_throttle:
            return
        now = self._clock.monotonic()
        current = self.rate(now)
        if current is None:
            current = self.sending_rate(now)
            if self.ceiling is not None:
                current = min(current, self.ceiling)
        current = max(current, self._floor())
        self.w_max = current
        self._k = (current * (1 - BETA) / SCALE) ** (1 / 3)
        self.last_throttle = now
        self.active = True
        self.throttles += 1

    async def pace(self, deadline: float | None, arrival: float | None = None) -> float:
        """Wait for this request's turn (``arrival``: when it reached the proxy, which
        orders the line); return the seconds waited. Raises RateLimitedError when its
        turn would come after ``deadline`` (at once, when the line says so)."""
        now = self._clock.monotonic()
        rate = self.rate(now)
        if rate is None:
            return 0.0
        line = self._line
        if not line and now >= self._next:
            self._next = now + 1 / rate
            return 0.0
        # At most everyone now waiting goes first (fewer, if some came later than we did).
        expected = max(0.0, self._next - now) + len(line) / rate
        if deadline is not None and now + expected > deadline:
            raise RateLimitedError(f"{self.name} (learned rate)", expected)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._joined += 1
        heapq.heappush(line, (now if arrival is None else arrival, self._joined, turn))
        if self._dispatcher is None:
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())
        try:
            if deadline is None:
                await turn
            else:
                async with asyncio.timeout(max(0.0, deadline - now)):
                    await turn
        except TimeoutError:
            # The rate fell while we waited: the deadline came first.
            raise RateLimitedError(f"{self.name} (learned rate)", len(line) / rate) from None
        finally:
            turn.cancel()  # given up (timeout, client gone): the dispatcher skips it
        return self._clock.monotonic() - now

    async def _dispatch(self) -> None:
        line = self._line
        try:
            while line:
                if line[0][2].done():
                    heapq.heappop(line)
                    continue
                now = self._clock.monotonic()
                rate = self.rate(now)
                if rate is None:
                    break  # pacing ended (the line is empty, or was emptied below)
                if now < self._next:
                    await self._clock.sleep(self._next - now)
                    continue  # the head may have gone, the rate moved: look again
                heapq.heappop(line)[2].set_result(None)
                self._next = max(self._next, now - 1 / rate) + 1 / rate
        finally:
            self._dispatcher = None
            for _, _, turn in line:  # nothing paces any more: whoever still waits goes
                if not turn.done():
                    turn.set_result(None)
            line.clear()

    async def close(self) -> None:
        """Stop the dispatcher (shutdown); whoever waits is let go."""
        task = self._dispatcher
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def status(self) -> dict[str, Any]:
        rate = self.rate()
        return {
            "active": rate is not None,
            "rate": None if rate is None else round(rate, 3),
            "throttled_at_rate": round(self.w_max, 3) if self.throttles else None,
            "throttles": self.throttles,
            "waiting": sum(1 for _, _, turn in self._line if not turn.done()),
            "ceiling": self.ceiling,
        }
