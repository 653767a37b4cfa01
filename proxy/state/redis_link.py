"""The one connection a process keeps to the fleet's Redis, and the breaker in front of it.

Redis must never hold a request up for long, nor be hammered while it is away: each step
of a call (a pooled connection, connecting, a reply) is bounded by ``timeout``, the
whole call by GUARD timeouts, and nothing is retried here; after
``BREAKER_FAILURES`` failures in a row the breaker opens and calls fail at once, without
touching the network, until ``BREAKER_PROBE`` seconds have passed; then one call is let
through as a probe, and its outcome closes or reopens the breaker. The callers (the
fleet backend's limits, pauses and token store) decide what to do while Redis is away;
this module only says whether it is there.

The URL's password never leaves this module: :attr:`RedisLink.shown_url` is the URL
without it, for logs, ``proxy check`` and ``/-/status``.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import structlog
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from yarl import URL

from ..clock import MONOTONIC, Clock

log = structlog.get_logger("proxy.state")

T = TypeVar("T")

BREAKER_FAILURES: Final = 3  # failures in a row that open the breaker
BREAKER_PROBE: Final = 1.0  # seconds the breaker stays open before one call probes
MAX_CONNECTIONS: Final = 8  # calls are short: a few connections serve a busy process
GUARD: Final = 3.0  # the outer bound of a call, in timeouts (see call())
# password=, and any other parameter redis-py would take a password from (ssl_password=).
_QUERY_PASSWORD: Final = re.compile(r"([?&][a-z_]*password=)[^&#]*", re.IGNORECASE)


class StateUnavailableError(Exception):
    """Redis did not answer (refused, timed out, or the breaker is open); ``reason`` is a
    short code safe to log: ``timeout``, ``connection``, ``redis_error`` or
    ``breaker_open``. Never holds the URL or a value."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"state backend unavailable: {reason}")
        self.reason = reason


def shown_url(url: str) -> str:
    """``url`` without its password: user and password (an ACL may make the user name a
    secret too) become ``***``, and so does a ``password`` query parameter (redis-py
    takes one in ``unix://`` URLs)."""
    url = _QUERY_PASSWORD.sub(r"\1***", url)
    parsed = URL(url)
    if parsed.password is None and parsed.user is None:
        return url  # as written (yarl would respell unix:/// as unix:/)
    return str(parsed.with_user("***").with_password(None))


class RedisLink:
    """Calls to one Redis (``redis://``, ``rediss://`` or ``unix://``), each bounded by
    ``timeout``, behind a breaker."""

    __slots__ = (
        "_clock",
        "_down_since",
        "_failures",
        "_open_until",
        "_probing",
        "_redis",
        "_timeout",
        "calls",
        "shown_url",
    )

    def __init__(self, url: str, timeout: float, clock: Clock = MONOTONIC) -> None:
        self.shown_url = shown_url(url)
        self._timeout = timeout
        self._clock = clock
        # No retries: a call that failed is the breaker's business, not a reason to wait
        # twice as long.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout,  # the wait for a free pooled connection
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            client_name=f"authproxy/{socket.gethostname()}/{os.getpid()}",
            retry=Retry(NoBackoff(), 0),
        )
        self._redis = aioredis.Redis.from_pool(pool)  # closing it closes the pool
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        self._down_since: float | None = None
        self.calls = CallStats()

    @property
    def up(self) -> bool:
        """False from the call that opened the breaker until a call succeeds again."""
        return self._down_since is None

    def down_for(self) -> float | None:
        """Seconds since the breaker opened; None while Redis answers."""
        if self._down_since is None:
            return None
        return self._clock.monotonic() - self._down_since

    async def call(self, op: Callable[[aioredis.Redis], Awaitable[T]], name: str = "call") -> T:
        """Run ``op`` on the client within ``timeout``; raise StateUnavailableError when
        Redis cannot answer now (at once while the breaker is open). ``name`` is the
        operation's, for the call metrics ("lease", "token_lock", ...)."""
        now = self._clock.monotonic()
        if self._failures >= BREAKER_FAILURES:
            if now < self._open_until or self._probing:
                self.calls.count(name, "breaker_open", None)
                raise StateUnavailableError("breaker_open")
            self._probing = True  # one probe at a time while open
        try:
            return await self._call(op, name, now)
        except StateUnavailableError as exc:
            self.calls.count(name, exc.reason, self._clock.monotonic() - now)
            raise

    async def _call(
        self, op: Callable[[aioredis.Redis], Awaitable[T]], name: str, start: float
    ) -> T:
        try:
            # redis-py bounds each step by ``timeout`` itself (a free pooled connection,
            # connecting, each read) and drops a connection that timed out; the guard
            # only catches what it would miss. Cancelling it at ``timeout`` exactly would
            # leave the connection half-read and never closed.
            async with asyncio.timeout(self._timeout * GUARD):
                result = await op(self._redis)
        except TimeoutError:
            _still_cancelled()
            raise self._failed("timeout") from None
        except (ConnectionError, OSError) as exc:
            _still_cancelled()
            raise self._failed("connection") from exc
        except RedisError as exc:
            _still_cancelled()
            # redis-py wraps socket failures in its own ConnectionError/TimeoutError.
            name = type(exc).__name__.lower()
            reason = (
                "timeout"
                if "timeout" in name
                else "connection"
                if "connect" in name
                else "redis_error"
            )
            raise self._failed(reason) from exc
        finally:
            self._probing = False
        self._succeeded()
        self.calls.count(name, "ok", self._clock.monotonic() - start)
        return result

    def _failed(self, reason: str) -> StateUnavailableError:
        self._failures += 1
        now = self._clock.monotonic()
        if self._failures >= BREAKER_FAILURES:
            self._open_until = now + BREAKER_PROBE
            if self._down_since is None:
                self._down_since = now
                log.error("state_backend_down", url=self.shown_url, reason=reason)
        return StateUnavailableError(reason)

    def _succeeded(self) -> None:
        self._failures = 0
        if self._down_since is not None:
            outage = self._clock.monotonic() - self._down_since
            self._down_since = None
            log.info("state_backend_up", url=self.shown_url, outage_s=round(outage, 3))

    def health(self) -> dict[str, Any]:
        """For /-/status: the URL without its password, and whether Redis answers."""
        return {"url": self.shown_url, "up": self.up}

    @property
    def client(self) -> aioredis.Redis:
        """The client itself, for what cannot be one bounded call: the pub/sub listener,
        which holds a connection of its own and reconnects by itself."""
        return self._redis

    async def close(self) -> None:
        await self._redis.aclose()


# Upper bounds of the call-latency histogram, in seconds: calls are meant to take a
# millisecond; the last buckets show a Redis that is slow or away.
CALL_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class CallStats:
    """Counts of Redis calls by operation and outcome, and their latency by operation:
    plain numbers the metrics read at scrape time."""

    __slots__ = ("latency", "outcomes")

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str], int] = {}
        # op -> (bucket counts, one per CALL_BUCKETS bound plus +Inf; sum of seconds)
        self.latency: dict[str, tuple[list[int], list[float]]] = {}

    def count(self, op: str, outcome: str, seconds: float | None) -> None:
        key = (op, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if seconds is None:
            return  # refused without a call: no latency to speak of
        entry = self.latency.get(op)
        if entry is None:
            entry = self.latency[op] = ([0] * (len(CALL_BUCKETS) + 1), [0.0])
        buckets, total = entry
        total[0] += seconds
        for i, bound in enumerate(CALL_BUCKETS):
            if seconds <= bound:
                buckets[i] += 1
                return
        buckets[-1] += 1


def _still_cancelled() -> None:
    """Raise CancelledError if this task was cancelled and the error at hand replaced it.

    redis-py turns a cancellation that meets its own read timeout into its TimeoutError
    (or a ConnectionError as it drops the connection); a background loop that took that for
    Redis being slow went on forever, and shutdown waited for it (seen in a `--workers 2`
    group under load)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
