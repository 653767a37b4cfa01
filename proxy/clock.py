"""Time as the policy layer sees it, injected so tests can run hours of it in milliseconds.

Limits, pauses, the learned rate and the retry loop read the time and sleep through a
:class:`Clock`; the process uses :data:`MONOTONIC`, tests a fake one that only moves when
every task waits (tests/fakeclock.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Final, Protocol


class Clock(Protocol):
    """A monotonic clock and a way to wait on it."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (only differences mean anything)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock."""
        ...


class _Monotonic:
    __slots__ = ()

    # The builtin itself, not a method that calls it: read several times per request.
    monotonic = staticmethod(time.monotonic)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


MONOTONIC: Final[Clock] = _Monotonic()
