"""Today's state: everything in this process's memory.

A limit's capacity is aiolimiter's leaky bucket, a pause a deadline on the monotonic clock,
a token a record in a LocalTokenStore (tokens.py).
With ``--workers N`` each worker has its own, and the limits are divided by N
(proxy/workers.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from typing import Any, Final

import structlog
from aiolimiter import AsyncLimiter

from ..clock import MONOTONIC, Clock
from ..config import AuthConfig, Config, RateConfig, RateLimitConfig
from .base import MAX_PAUSE, Capacity, RoutePause
from .redis_link import CallStats
from .tokens import LocalTokenStore, TokenStore

log = structlog.get_logger("proxy.retry")

TRANSIT_MARGIN: Final = 0.02  # seconds of traffic held back from the bucket (see local_bucket)


class LocalBucket(AsyncLimiter):
    """aiolimiter's bucket as a Capacity: nothing runs in the background, so nothing to
    close."""

    async def close(self) -> None:
        return None

    def fill(self) -> float:
        """The share of the bucket taken now, for the status page."""
        self._leak()  # what drained since the last acquire is free again
        return min(1.0, self._level / self.max_rate)


def local_bucket(config: RateLimitConfig) -> LocalBucket:
    """A bucket that keeps the promise of ``config`` at the upstream, not just at our door.

    A limit of ``rate`` per ``per`` seconds with bursts of ``burst`` is aiolimiter's leaky
    bucket of capacity ``burst`` draining ``rate / per`` a second: ``AsyncLimiter(burst,
    burst * per / rate)``. Starting empty, it admits at most ``burst + rate * t`` requests in
    any window of ``t`` seconds. Requests released on schedule can bunch up on the way
    (event loop, pooled connections), so the bucket leaves room for TRANSIT_MARGIN of
    traffic: arrivals delayed by up to that much still fit ``burst + rate * t``; the
    sustained rate is unchanged. Whole requests only, never more than half the burst, never
    below one request: small limits keep every slot they were given.
    """
    rate = config.rate / config.per
    margin = math.floor(
        max(0.0, min(rate * TRANSIT_MARGIN, config.capacity / 2, config.capacity - 1))
    )
    capacity = config.capacity - margin
    return LocalBucket(capacity, capacity / rate)


class LocalPause:
    """A route pause held in this process: no request goes upstream before ``until``."""

    __slots__ = ("_clock", "_paused_seconds", "route", "until")

    def __init__(self, route: str, clock: Clock = MONOTONIC) -> None:
        self.route = route
        self._clock = clock
        self.until = 0.0
        self._paused_seconds = 0.0

    @property
    def paused_seconds(self) -> float:
        return self._paused_seconds

    def pause(self, seconds: float, reason: str) -> None:
        seconds = min(seconds, MAX_PAUSE)
        now = self._clock.monotonic()
        until = now + seconds
        if until <= self.until:
            return
        self._paused_seconds += until - max(self.until, now)
        if self.until <= now:
            log.warning("route_paused", route=self.route, seconds=round(seconds, 3), reason=reason)
        self.until = until

    def remaining(self) -> float:
        return max(0.0, self.until - self._clock.monotonic())

    def status(self) -> dict[str, Any]:
        remaining = self.remaining()
        return {
            "paused": remaining > 0,
            "remaining_s": round(remaining, 3),
            "paused_total_s": round(self._paused_seconds, 3),
        }


class LocalState:
    """The per-process backend: every call is answered from memory, at once. With
    ``workers`` processes each keeping its own, each enforces 1/workers of every limit."""

    __slots__ = ("_clock", "_workers")

    def __init__(self, clock: Clock = MONOTONIC, workers: int = 1) -> None:
        self._clock = clock
        self._workers = workers

    @property
    def backend(self) -> str:
        return "local"

    def share(self, config: Config) -> Config:
        n = self._workers
        if n == 1:
            return config
        routes = tuple(
            dataclasses.replace(r, rate_limit=_share(r.rate_limit, n)) for r in config.routes
        )
        auth = {}
        for name, table in config.auth.items():
            token_rate = table.token_rate
            if token_rate is not None:
                # A whole number of token requests per window, at least one per worker.
                token_rate = RateConfig(rate=max(1, int(token_rate.rate) // n), per=token_rate.per)
            auth[name] = dataclasses.replace(
                table, rate_limit=_share(table.rate_limit, n), token_rate=token_rate
            )
        clients = {
            name: dataclasses.replace(c, rate_limit=_share(c.rate_limit, n))
            for name, c in config.clients.items()
        }
        return dataclasses.replace(config, routes=routes, auth=auth, clients=clients)

    def capacity(self, limit: str, config: RateLimitConfig) -> Capacity:
        return local_bucket(config)

    def route_pause(self, route: str, upstream: str) -> RoutePause:
        return LocalPause(route, self._clock)

    async def prepare(self, auths: Iterable[AuthConfig]) -> None:
        """Nothing is slow to make here."""

    def token_store(self, auth: AuthConfig) -> TokenStore:
        return LocalTokenStore(auth.token_rate, clock=self._clock)

    def health(self) -> dict[str, Any]:
        return {"backend": "local", "up": True}

    def samples(self) -> Iterator[tuple[str, tuple[str, ...], float]]:
        yield "proxy_state_up", (), 1.0

    def call_stats(self) -> CallStats | None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _share(limit: RateLimitConfig | None, n: int) -> RateLimitConfig | None:
    if limit is None:
        return None
    return dataclasses.replace(limit, rate=limit.rate / n, burst=max(1.0, limit.capacity / n))
