"""One rate limit for the whole fleet: slots leased from a GCRA in Redis (gcra.py).

Requests never wait on Redis while this process holds a usable lease token: ``acquire()``
then takes one without suspending, and a background task (one per limit, at most one
call in flight) keeps leases coming, prefetching at half a slice and reserving ahead for
the line of waiting requests; when the limit's ``max_wait`` horizon is full it waits as
long as the script says instead of asking again.

Redis away (a call failed, or the link's breaker is open): with ``on_failure = "local"``
this process enforces its share of the limit (``1/fleet.share()`` of rate and burst) in a
bucket of its own. The bucket starts with no burst, and leases that have not started yet
are dropped, so what the fleet spends across the switch still keeps ``burst + rate*t``.
Leases already usable are spent until they expire. When Redis answers again, the first
call after any local spending restarts the fleet's bucket empty, so the shares spent
during the outage and a refilled bucket cannot add up. With ``on_failure = "closed"``
requests fail with StateBackendError instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import Sized
from functools import partial
from typing import Any, Final

import structlog
from redis import asyncio as aioredis
from redis.exceptions import NoScriptError

from ..config import RateLimitConfig
from ..errors import StateBackendError
from .fleet import Fleet
from .gcra import LEASE_LUA, LEASE_SHA, LeaseBook, LeasePlan
from .local import LocalBucket, local_bucket
from .redis_link import StateUnavailableError

log = structlog.get_logger("proxy.state")

RECHECK: Final = 0.1  # seconds between calls while Redis is away (the breaker fails most fast)


async def lease_call(
    redis: aioredis.Redis, key: str, args: tuple[str, ...]
) -> tuple[int, int, int, int]:
    """Run LEASE_LUA on ``key``: ``(granted, delay_us, retry_us, now_us)``. A Redis that
    forgot the script (restarted, flushed) is given it again."""
    try:
        reply = await redis.evalsha(LEASE_SHA, 1, key, *args)
    except NoScriptError:
        await redis.script_load(LEASE_LUA)
        reply = await redis.evalsha(LEASE_SHA, 1, key, *args)
    n, delay, retry, now = (int(x) for x in reply)
    return n, delay, retry, now


class LeaseCapacity:
    """The slots of one limit, shared by every process of the fleet (a Capacity).

    Counters for metrics: ``lease_calls``, ``lease_failures``, ``tokens_granted``,
    ``tokens_spent``, ``tokens_expired`` (dropped unspent), ``fallback_spent`` (taken from
    this process's share while Redis was away) and ``fallback`` (True while away)."""

    __slots__ = (
        "_away",
        "_blocked",
        "_book",
        "_bucket",
        "_clock",
        "_closed",
        "_config",
        "_delay",
        "_fleet",
        "_key",
        "_kick",
        "_line",
        "_name",
        "_news",
        "_next_try",
        "_restart",
        "_task",
        "fallback_spent",
        "lease_calls",
        "lease_failures",
        "plan",
    )

    def __init__(self, fleet: Fleet, name: str, config: RateLimitConfig, lease: float) -> None:
        self._fleet = fleet
        self._clock = fleet.clock
        self._name = name
        self._config = config
        self._key = fleet.key("lim", name)
        # The same transit room as this process's own bucket keeps (local.py).
        held = local_bucket(config).max_rate
        self.plan = LeasePlan.of(config.rate / config.per, held, lease, config.max_wait)
        self._book = LeaseBook(self.plan, self._clock.monotonic())
        self._line: Sized = ()
        self._blocked = 0  # acquire() calls waiting
        self._task: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()  # wakes the refill task
        self._news = asyncio.Event()  # set (then replaced) when waiters should look again
        self._bucket: LocalBucket | None = None  # this process's share while Redis is away
        self._away = False
        self._restart = False  # the fallback share was spent: restart the fleet's bucket
        self._next_try = 0.0
        self._delay = 0.0
        self._closed = False
        self.lease_calls = 0
        self.lease_failures = 0
        self.fallback_spent = 0

    @property
    def tokens_granted(self) -> int:
        return self._book.granted

    @property
    def tokens_spent(self) -> int:
        return self._book.spent

    @property
    def tokens_expired(self) -> int:
        return self._book.expired

    @property
    def fallback(self) -> bool:
        return self._away

    def watch(self, line: Sized) -> None:
        """Size reservations by ``line``, the requests waiting for this limit."""
        self._line = line

    def expected_wait(self, ahead: int) -> float:
        """How long a request with ``ahead`` requests before it waits (limits.Paced).

        The leases this process holds already place the first of its line: their start
        times on the fleet's queue say when. Past them, the line drains at the rate this
        process has been spending at, or an equal share of the fleet's rate if that is
        more; while Redis is away, at its fallback share."""
        now = self._clock.monotonic()
        opens, missing = self._book.serves(ahead + 1)
        wait = max(0.0, opens - now)
        if missing:
            rate = self.plan.rate
            if self._away:
                drain = rate / self._fleet.share()
            else:
                drain = max(self._book.rate, rate / max(1, self._fleet.seen))
            wait += missing / drain
        return wait

    def has_capacity(self) -> bool:
        if self._book.usable(self._clock.monotonic()):
            return True
        bucket = self._bucket
        return bucket is not None and bucket.has_capacity()

    async def acquire(self) -> None:
        book = self._book
        if book.take(self._clock.monotonic()):
            if book.low():
                self._wake()
            return
        await self._wait()

    async def _wait(self) -> None:
        book = self._book
        self._blocked += 1
        try:
            while True:
                now = self._clock.monotonic()
                if book.take(now):
                    self._wake()
                    return
                bucket = self._bucket
                if bucket is not None and bucket.has_capacity():
                    await bucket.acquire()  # a slot is there: returns without suspending
                    self._spent_locally()
                    return
                if self._away and self._fleet.closed and not book.balance:
                    raise StateBackendError(self._name)
                self._wake()
                opens = book.next_open(now)
                timeout = None if opens is None else opens - now
                if bucket is not None and await self._bucket_or_news(bucket, timeout):
                    self._spent_locally()
                    return
                if bucket is None:
                    news = self._news
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await news.wait()
        finally:
            self._blocked -= 1

    async def _bucket_or_news(self, bucket: LocalBucket, within: float | None) -> bool:
        """Wait for a slot of the fallback share, or for news (Redis back, a lease open);
        True when a slot was taken."""
        take = asyncio.ensure_future(bucket.acquire())
        news = asyncio.ensure_future(self._news.wait())
        try:
            await asyncio.wait((take, news), timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            news.cancel()
            took = take.done() and not take.cancelled() and take.exception() is None
            take.cancel()
        return took

    def _spent_locally(self) -> None:
        self.fallback_spent += 1
        self._restart = True

    def _wake(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._refill())
        self._kick.set()

    def _announce(self) -> None:
        news, self._news = self._news, asyncio.Event()
        news.set()

    async def _refill(self) -> None:
        while not self._closed:
            try:
                await self._step()
            except Exception:
                # A bug here must not leave waiters hanging: they get the fallback share.
                log.exception("lease_refill_failed", limit=self._name)
                self._next_try = self._clock.monotonic() + RECHECK
                await self._went_away("internal")
                await self._idle(RECHECK)

    async def _step(self) -> None:
        book, link = self._book, self._fleet.link
        self._kick.clear()
        now = self._clock.monotonic()
        backlog = max(len(self._line), self._blocked)
        want = book.want(now, backlog)
        if self._away and not want and link.up:
            self._back()  # another call found Redis back; the next lease restarts if needed
        if want and self._away and now < self._next_try:
            await self._idle(self._next_try - now)
        elif want:
            await self._ask(want)
        else:
            change = book.next_change(now, backlog)
            # While away, look again soon: the link may find Redis back for someone else.
            if self._away:
                change = min(change or math.inf, now + RECHECK)
            await self._idle(None if change is None else change - now)

    async def _idle(self, seconds: float | None) -> None:
        """Until kicked (a spend, a waiter), or ``seconds`` (None: no limit)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(None if seconds is None else max(seconds, 0.001)):
                await self._kick.wait()

    async def _ask(self, want: int) -> None:
        clock = self._clock
        restart = self._restart
        self._restart = False
        sent = clock.monotonic()
        self.lease_calls += 1
        try:
            n, delay, retry, _ = await self._fleet.link.call(
                partial(lease_call, key=self._key, args=self.plan.args(want, restart)), "lease"
            )
        except StateUnavailableError as exc:
            self._restart = self._restart or restart
            self.lease_failures += 1
            self._next_try = clock.monotonic() + RECHECK
            await self._went_away(exc.reason)
            return
        self._book.granted_at(sent, clock.monotonic(), want, (n, delay, retry))
        self._delay = delay / 1e6
        if self._away:
            self._back()
        self._announce()

    async def _went_away(self, reason: str) -> None:
        if self._away:
            return
        self._away = True
        share = self._fleet.share()
        if not self._fleet.closed:
            self._book.drop_future(self._clock.monotonic())
            config = self._config
            bucket = local_bucket(
                dataclasses.replace(
                    config, rate=config.rate / share, burst=max(1.0, config.capacity / share)
                )
            )
            await bucket.acquire(bucket.max_rate)  # starts with no burst to give
            self._bucket = bucket
        if self._fleet.closed:
            log.warning("leases_unavailable", limit=self._name, reason=reason, then="refuse")
        else:
            log.warning(
                "leases_unavailable", limit=self._name, reason=reason, then=f"share 1/{share}"
            )
        self._announce()

    def _back(self) -> None:
        self._away = False
        self._bucket = None
        log.info("leases_back", limit=self._name)
        self._announce()

    def status(self) -> dict[str, Any]:
        """For /-/status: tokens held, whether this process spends its own share, and how
        far ahead the last lease started (the fleet's queue)."""
        return {
            "balance": self._book.balance,
            "fallback": self._away,
            "queue_delay_s": round(self._delay, 6),
            "lease_s": self.plan.lease,
        }

    async def close(self) -> None:
        """Stop asking for leases; what is held is dropped with this object (tokens are
        never returned: the script cannot tell them from spent ones)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            self._kick.set()  # an idle refill loop sees _closed even if the cancel was lost
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._announce()
