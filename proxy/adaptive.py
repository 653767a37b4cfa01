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

Pacing is a schedule, not a bucket: each request reserves the next slot (one every
1/rate seconds) and sleeps until it. It costs nothing until the first 429, and nothing
but a clock read when the route is below its learned rate.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .errors import RateLimitedError

BETA: Final = 0.7  # the rate kept after a throttle (CUBIC's multiplicative decrease)
SCALE: Final = 0.4  # CUBIC's C: how fast the rate grows back
MIN_RATE: Final = 0.5  # requests a second: never paced slower (as the AWS SDKs)
# Sending is measured in windows of this many seconds: the rate a throttle cuts from.
_WINDOW: Final = 0.5


class AdaptiveRate:
    """One route's learned rate and the schedule that paces requests to it."""

    __slots__ = (
        "_clock",
        "_count",
        "_generation",
        "_k",
        "_last_rate",
        "_next",
        "_sleep",
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
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.name = name
        self.ceiling = ceiling  # requests a second: the configured limit, if any
        self._clock = clock
        self._sleep = sleep
        self.active = False
        self.throttles = 0
        self.w_max = 0.0  # the rate that was throttled
        self._k = 0.0  # seconds after a throttle until the rate is back at w_max
        self.last_throttle = -math.inf
        self._next = 0.0  # the next free slot of the schedule
        self._generation = 0
        now = clock()
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

    def rate(self, now: float | None = None) -> float | None:
        """The learned rate, requests a second; None while pacing is off."""
        if not self.active:
            return None
        now = self._clock() if now is None else now
        rate = SCALE * (now - self.last_throttle - self._k) ** 3 + self.w_max
        if rate >= 2 * self.w_max or (self.ceiling is not None and rate >= self.ceiling):
            self.active = False  # grown past the throttled rate (or to the limit): done
            return None
        floor = MIN_RATE if self.ceiling is None else min(MIN_RATE, self.ceiling)
        return max(floor, rate)

    def throttled(self, sent_at: float) -> None:
        """The upstream throttled an attempt sent at ``sent_at``: cut the rate, once per
        throttling event (answers to attempts sent before the last cut add nothing: they
        left at the rate already cut)."""
        if sent_at < self.last_throttle:
            return
        now = self._clock()
        current = self.rate(now)
        if current is None:
            current = self.sending_rate(now)
            if self.ceiling is not None:
                current = min(current, self.ceiling)
        current = max(current, MIN_RATE if self.ceiling is None else min(MIN_RATE, self.ceiling))
        self.w_max = current
        self._k = (current * (1 - BETA) / SCALE) ** (1 / 3)
        self.last_throttle = now
        self.active = True
        self.throttles += 1
        # Slots handed out at the old rate are void: their holders take new ones as they
        # wake, spaced at the new rate from now.
        self._generation += 1
        self._next = now

    async def pace(self, deadline: float | None) -> float:
        """Wait for this request's slot; return the seconds waited. Raises
        RateLimitedError at once when the slot lies past ``deadline``."""
        waited = 0.0
        while True:
            now = self._clock()
            rate = self.rate(now)
            if rate is None:
                return waited
            slot = max(now, self._next)
            if deadline is not None and slot > deadline:
                raise RateLimitedError(f"{self.name} (learned rate)", slot - now)
            self._next = slot + 1 / rate
            if slot <= now:
                return waited
            generation = self._generation
            await self._sleep(slot - now)
            waited += self._clock() - now
            if generation == self._generation:
                return waited
            # Throttled while we waited: our slot was taken at the old rate; take another.

    def status(self) -> dict[str, Any]:
        rate = self.rate()
        return {
            "active": rate is not None,
            "rate": None if rate is None else round(rate, 3),
            "throttled_at_rate": round(self.w_max, 3) if self.throttles else None,
            "throttles": self.throttles,
            "ceiling": self.ceiling,
        }
