"""The vendors' rate limits: a token bucket (Travtus) and a sliding window (Travelyzer).

Both take the current time as an argument instead of reading a clock, so the sandbox decides
the time once per request and tests can drive them without sleeping.
"""

from __future__ import annotations

import math
from collections import deque


class TokenBucket:
    """``burst`` requests at once, refilled at ``rate`` per second; starts full.

    This is how API Gateway throttles ("burst 5,000, 10,000 req/s"): a client that was idle may
    send a whole burst, then as many as the refill allows.
    """

    __slots__ = ("_level", "_rate", "_stamp", "burst")

    def __init__(self, burst: int, rate: float, now: float) -> None:
        self.burst = burst
        self._rate = rate
        self._level = float(burst)
        self._stamp = now

    def take(self, now: float) -> bool:
        """Spend one request if the bucket holds one; ``False`` means throttle."""
        # A clock that stepped backwards must not drain the bucket.
        elapsed = max(0.0, now - self._stamp)
        self._level = min(float(self.burst), self._level + elapsed * self._rate)
        self._stamp = now
        if self._level >= 1.0:
            self._level -= 1.0
            return True
        return False


class AdmissionWindow:
    """At most ``limit`` admissions in any ``window`` seconds.

    Refused requests are not counted, so ``retry_after`` tells the truth: the wait until the
    oldest admission leaves the window.
    """

    __slots__ = ("_admitted", "limit", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._admitted: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self._admitted and self._admitted[0] <= now - self.window:
            self._admitted.popleft()

    def admit(self, now: float) -> bool:
        """Count one request at ``now`` if the window has room; ``False`` means refuse it."""
        self._expire(now)
        if len(self._admitted) >= self.limit:
            return False
        self._admitted.append(now)
        return True

    def retry_after(self, now: float) -> int:
        """Whole seconds (at least 1) until the window has room again."""
        self._expire(now)
        if len(self._admitted) < self.limit:
            return 1
        return max(1, math.ceil(self._admitted[0] + self.window - now))
