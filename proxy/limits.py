"""Client-side rate limits: the upstream never sees more than it allows.

A limit of ``rate`` per ``per`` seconds with bursts of ``burst`` admits at most
``burst + rate * t`` requests in any window of ``t`` seconds, which is the guarantee we
promise upstreams. The slots come from the state (proxy/state/: a bucket in this process
today); the line of waiters is kept here.

A bucket such as aiolimiter's orders its waiters by amount, then arrival, and lets a
newcomer take capacity ahead of a woken waiter; users waiting in line expect first come,
first served. So waiters queue here, and one dispatcher task takes slots from the
capacity on their behalf and hands them out in order: while capacity lasts, ``acquire()``
returns without suspending, so a whole run of waiters is released in one go (a lock
handed from waiter to waiter costs a task switch per slot and fell 7% short at
10,000/s). A request whose place in line means a wait beyond ``max_wait`` is told at once
(429 with Retry-After) instead of after waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sized
from typing import Any, Protocol, runtime_checkable

from .clock import MONOTONIC, Clock
from .config import RateLimitConfig
from .errors import RateLimitedError
from .state.base import Capacity


class Limit(Protocol):
    """A rate limit requests pass on their way upstream (a route's, an auth table's or a
    client's). What forwarding knows of a limit: it never reads the config behind it."""

    @property
    def name(self) -> str:
        """Who the limit is for, as errors and /-/status name it ("route /travtus")."""
        ...

    @property
    def rate(self) -> float:
        """The sustained rate, requests a second."""
        ...

    @property
    def max_wait(self) -> float:
        """The longest a request waits for a slot before it is refused."""
        ...

    async def acquire(self, deadline: float | None = None) -> float:
        """Take one slot, waiting in line if needed; return the seconds waited. Raises
        RateLimitedError, before anything is sent, when the wait would pass ``max_wait``
        or ``deadline`` (a reading of the clock the limit was given, the route's)."""
        ...

    def status(self) -> dict[str, Any]:
        """For /-/status: the configured limit, who waits, refusals so far."""
        ...

    async def close(self) -> None:
        """Stop waiting on the limit's behalf (shutdown); whoever waits is cancelled."""
        ...


@runtime_checkable
class LineWatcher(Protocol):
    """A capacity that sizes what it reserves by the line waiting for it (a fleet's
    leases ask Redis for as many slots as there are requests waiting, not one at a time)."""

    def watch(self, line: Sized) -> None:
        """Keep ``line``; its length is the number of requests waiting for a slot."""
        ...


@runtime_checkable
class Paced(Protocol):
    """A capacity that knows how fast this process's line drains: a fleet's limit gives
    each process a share of the rate, so a line that the whole rate would serve within
    ``max_wait`` may not be served by this process's share."""

    def expected_wait(self, ahead: int) -> float:
        """Seconds until a request with ``ahead`` requests before it gets a slot."""
        ...


@runtime_checkable
class Filled(Protocol):
    """A capacity that knows how much of its burst is in use (this process's bucket; a
    fleet's share lives in Redis and does not say)."""

    def fill(self) -> float:
        """The share of the burst taken now, 0 (idle) to 1 (full: the next one waits)."""
        ...


class RateLimit:
    """One limit, shared by every request that passes it, over slots from the state.

    A capacity that cannot give slots (its ``acquire()`` raises, e.g. a fleet limit whose
    Redis is away with ``on_failure = "closed"``) fails every request waiting in line with
    that error at once; a request on the fast path gets it directly."""

    __slots__ = (
        "_capacity",
        "_clock",
        "_config",
        "_dispatcher",
        "_line",
        "_name",
        "_paced",
        "_rate",
        "rejected",
    )

    def __init__(
        self, name: str, config: RateLimitConfig, capacity: Capacity, clock: Clock = MONOTONIC
    ) -> None:
        self._name = name
        self._clock = clock
        self._config = config
        self._rate = config.rate / config.per
        self._capacity = capacity
        self._line: deque[asyncio.Future[None]] = deque()
        self._dispatcher: asyncio.Task[None] | None = None
        self.rejected = 0
        if isinstance(capacity, LineWatcher):
            capacity.watch(self._line)
        self._paced = capacity if isinstance(capacity, Paced) else None

    @property
    def name(self) -> str:
        return self._name

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def max_wait(self) -> float:
        return self._config.max_wait

    async def acquire(self, deadline: float | None = None) -> float:
        capacity = self._capacity
        line = self._line
        if not line and capacity.has_capacity():
            await capacity.acquire()  # a slot is there: returns without suspending
            return 0.0
        budget = self._config.max_wait
        now = self._clock.monotonic()
        if deadline is not None:
            budget = min(budget, deadline - now)
        expected = self._expected(len(line))
        if expected > budget:
            raise self._reject(expected)
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line.append(ticket)
        if self._dispatcher is None:
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())
        try:
            async with asyncio.timeout(budget):
                await ticket
        except TimeoutError:
            raise self._reject(self._expected(len(line))) from None
        finally:
            # A ticket given up (timeout, or the client left) is skipped by the dispatcher.
            if not ticket.cancel() and not ticket.cancelled():
                ticket.exception()  # retrieved: a waiter cancelled as it failed
        return self._clock.monotonic() - now

    def _expected(self, ahead: int) -> float:
        if self._paced is not None:
            return self._paced.expected_wait(ahead)
        # In a full bucket a slot frees every 1/rate seconds: everyone ahead, then us.
        return (ahead + 1) / self._rate

    async def _dispatch(self) -> None:
        line = self._line
        try:
            while line:
                if line[0].done():
                    line.popleft()
                    continue
                try:
                    await self._capacity.acquire()
                except Exception as exc:
                    # Nobody in line could get a slot now: each is told, rather than left
                    # to time out. Those that come next start a new dispatcher.
                    while line:
                        ticket = line.popleft()
                        if not ticket.done():
                            ticket.set_exception(exc)
                    return
                # The head may have given up while we waited; its slot then goes to the next.
                while line and line[0].done():
                    line.popleft()
                if line:
                    line.popleft().set_result(None)
        finally:
            self._dispatcher = None

    async def close(self) -> None:
        """Stop the dispatcher (shutdown or a reload that replaced the limit); waiters still
        in line are cancelled, and the capacity is closed."""
        task = self._dispatcher
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for ticket in self._line:
            ticket.cancel()
        self._line.clear()
        await self._capacity.close()

    def _reject(self, retry_after: float) -> RateLimitedError:
        self.rejected += 1
        return RateLimitedError(self._name, retry_after)

    @property
    def config(self) -> RateLimitConfig:
        """What the limit was built from: a reload keeps a limit whose config is the same."""
        return self._config

    def status(self) -> dict[str, Any]:
        config = self._config
        return {
            "rate": config.rate,
            "per": config.per,
            "burst": config.capacity,
            "max_wait": config.max_wait,
            "waiting": sum(1 for ticket in self._line if not ticket.done()),
            "has_capacity": not self._line and self._capacity.has_capacity(),
            "fill": round(self._capacity.fill(), 3) if isinstance(self._capacity, Filled) else None,
            "rejected": self.rejected,
        }
