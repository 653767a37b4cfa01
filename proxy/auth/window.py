"""A sliding-window cap for our own token requests."""

from __future__ import annotations

from collections import deque


class SlidingWindow:
    """At most ``limit`` events in any ``period`` seconds, exactly.

    Not aiolimiter: its leaky bucket admits a full bucket *plus* the drained rate within one
    window (200 in a minute for 100/min), while Travelyzer means at most 100 in any minute.
    Token requests are rare, so keeping their times costs nothing.
    """

    __slots__ = ("_limit", "_period", "_times")

    def __init__(self, limit: int, period: float) -> None:
        self._limit = max(1, limit)
        self._period = period
        self._times: deque[float] = deque()

    def wait_time(self, now: float) -> float:
        """Seconds until an event may happen (0 when it may now)."""
        while self._times and self._times[0] <= now - self._period:
            self._times.popleft()
        if len(self._times) < self._limit:
            return 0.0
        return self._times[0] + self._period - now

    def record(self, now: float) -> None:
        self._times.append(now)
