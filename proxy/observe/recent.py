"""The last few errors the proxy answered itself, for the status page.

Only what an operator needs to see a pattern: when, which route, the status and the
``X-Proxy-Error`` code. Never the path, a header, a client's name or a message: those can
carry what a request held.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Final, TypedDict

KEPT: Final = 20


class ErrorSeen(TypedDict):
    """One entry of ``/-/status``'s ``errors``: ``time`` is Unix seconds."""

    time: float
    route: str | None
    status: int
    error: str


class RecentErrors:
    """A ring of the last ``kept`` proxy errors; one per process, kept across reloads."""

    __slots__ = ("_clock", "_ring")

    def __init__(self, kept: int = KEPT, clock: Callable[[], float] = time.time) -> None:
        self._ring: deque[tuple[float, str | None, int, str]] = deque(maxlen=kept)
        self._clock = clock

    def note(self, route: str | None, status: int, code: str) -> None:
        # A tuple, not a dict: under a flood of 429s this runs on every refusal.
        self._ring.append((self._clock(), route, status, code))

    def snapshot(self) -> list[ErrorSeen]:
        """Newest first."""
        return [
            ErrorSeen(time=round(at, 3), route=route, status=status, error=code)
            for at, route, status, code in reversed(self._ring)
        ]
