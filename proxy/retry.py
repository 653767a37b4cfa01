"""Upstream throttling: when to retry a 429, how long to wait, and the route-wide pause.

An upstream that answers 429 (or 503 with Retry-After, where configured) asked us to slow
down. We wait as long as it says (Retry-After, delta-seconds or HTTP-date) or back off
exponentially with full jitter, and pause the whole route meanwhile, so other requests do
not keep hammering it (the pause itself is kept by the state, proxy/state/). Its
RateLimit headers saying nothing is left pause the route before the 429 comes. A retry
budget keeps a 429 storm from multiplying the load.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Final

from .config import RetryConfig
from .headers import retry_after_seconds

# Retries always allowed in flight, whatever the budget share (as Envoy's
# min_retry_concurrency): a quiet route must still be able to retry at all.
MIN_RETRY_CONCURRENCY: Final = 3
# A reset this large is a unix timestamp, not delta-seconds (both are seen in the wild).
_EPOCH_THRESHOLD: Final = 1_000_000_000
# RateLimit field: draft-ietf-httpapi-ratelimit-headers up to -06 ("remaining=0, reset=5")
# and from -07 on as a structured field ('"default";r=0;t=5').
_DRAFT_REMAINING: Final = re.compile(r"(?:^|[\s,;])(?:remaining|r)=(\d+)", re.ASCII)
_DRAFT_RESET: Final = re.compile(r"(?:^|[\s,;])(?:reset|t)=(\d+)", re.ASCII)


def retry_delay(
    config: RetryConfig,
    attempt: int,
    headers: Mapping[str, str],
    jitter: Callable[[], float] = random.random,
) -> tuple[float, bool]:
    """Seconds before the next attempt, and whether the upstream said so itself.

    ``attempt`` is the number of the attempt that was just refused (1 for the first).
    """
    hinted = retry_after_seconds(headers.get("Retry-After"))
    if hinted is not None:
        return hinted, True
    ceiling = min(config.max_backoff, config.backoff * 2 ** min(attempt - 1, 30))
    return max(config.backoff, jitter() * ceiling), False


def exhausted_for(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds until the upstream's quota resets, when its RateLimit headers say none is
    left; None when they say nothing or something remains."""
    remaining = headers.get("RateLimit-Remaining")
    reset: str | None = None
    if remaining is not None:
        reset = headers.get("RateLimit-Reset")
    else:
        field = headers.get("RateLimit")
        if field is None:
            return None
        found = _DRAFT_REMAINING.search(field)
        remaining = found.group(1) if found else None
        found = _DRAFT_RESET.search(field)
        reset = found.group(1) if found else None
    if remaining is None or remaining.strip() != "0" or reset is None or not reset.isascii():
        return None
    try:
        seconds = float(reset.strip())
    except ValueError:
        return None
    if seconds >= _EPOCH_THRESHOLD:
        seconds -= time.time() if now is None else now
    return max(0.0, seconds)


class RetryBudget:
    """Retries in flight may be at most ``share`` of the route's requests in flight."""

    __slots__ = ("active", "retrying", "share")

    def __init__(self, share: float) -> None:
        self.share = share
        self.active = 0
        self.retrying = 0

    def allows_retry(self) -> bool:
        return self.retrying < max(MIN_RETRY_CONCURRENCY, self.share * self.active)
