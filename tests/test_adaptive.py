"""The learned rate (proxy/adaptive.py) on a fake clock: cut on throttling, paced release,
cubic growth back, bounds. Nothing sleeps for real."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Coroutine
from typing import Any

import pytest

from proxy.adaptive import BETA, MIN_RATE, AdaptiveRate
from proxy.errors import RateLimitedError


class Clock:
    """A timeline that moves only when every task waits: sleepers wake in time order."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, id(future), future))
        await future

    async def run(self, *coroutines: Coroutine[Any, Any, None]) -> None:
        """Run these to completion, moving time to the next wake-up whenever all wait."""
        tasks = [asyncio.ensure_future(c) for c in coroutines]
        while not all(t.done() for t in tasks):
            for _ in range(10):
                await asyncio.sleep(0)  # let every runnable task reach its next wait
            if self._sleepers:
                wake, _, future = heapq.heappop(self._sleepers)
                self.now = max(self.now, wake)
                future.set_result(None)
        for task in tasks:
            task.result()


def learner(ceiling: float | None = None) -> tuple[AdaptiveRate, Clock]:
    clock = Clock()
    return AdaptiveRate("route /v", ceiling, clock=clock, sleep=clock.sleep), clock


def send(rate: AdaptiveRate, clock: Clock, per_second: float, seconds: float) -> None:
    for _ in range(int(per_second * seconds)):
        rate.sent(clock.now)
        clock.now += 1 / per_second


async def test_off_until_the_first_throttle() -> None:
    """Before any 429 the route is not paced at all."""
    rate, clock = learner()
    send(rate, clock, 100, 2)
    assert rate.rate() is None
    assert await rate.pace(None) == 0.0
    assert rate.status()["active"] is False


async def test_a_throttle_cuts_to_beta_times_the_sending_rate() -> None:
    """A 429 while sending 100/s sets the learned rate to BETA x 100/s."""
    rate, clock = learner()
    send(rate, clock, 100, 2)
    rate.throttled(clock.now)
    assert rate.rate() == pytest.approx(100 * BETA, rel=0.02)


async def test_requests_are_released_at_the_learned_rate() -> None:
    """Requests held back leave one every 1/rate seconds, in order, not all at once."""
    rate, clock = learner()
    send(rate, clock, 10, 2)
    rate.throttled(clock.now)
    learned = rate.rate()
    assert learned is not None
    starts: list[float] = []

    async def one() -> None:
        await rate.pace(None)
        starts.append(clock.now)

    await clock.run(*(one() for _ in range(5)))
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 5
    assert all(gap == pytest.approx(1 / learned, rel=0.1) for gap in gaps)


async def test_answers_to_attempts_sent_before_the_cut_do_not_cut_again() -> None:
    """Ten 429s for attempts that left before the first cut are one throttling event."""
    rate, clock = learner()
    send(rate, clock, 100, 1)
    sent_before = clock.now - 0.01
    rate.throttled(sent_before)
    first = rate.rate()
    for _ in range(10):
        rate.throttled(sent_before)
    assert rate.rate() == pytest.approx(first)
    assert rate.status()["throttles"] == 1
    clock.now += 0.1
    rate.throttled(clock.now)  # sent after the cut: a new event
    assert rate.status()["throttles"] == 2
    assert rate.rate() < first  # type: ignore[operator]


async def test_the_rate_grows_back_along_a_cubic_and_pacing_ends() -> None:
    """Without further 429s the rate is back at the throttled rate after K seconds, and
    pacing ends once it reaches twice that."""
    rate, clock = learner()
    send(rate, clock, 40, 2)
    rate.throttled(clock.now)
    throttled_at = rate.status()["throttled_at_rate"]
    k = (throttled_at * (1 - BETA) / 0.4) ** (1 / 3)
    clock.now += k
    assert rate.rate() == pytest.approx(throttled_at, rel=0.01)
    clock.now += 1.0
    grown = rate.rate()
    assert grown is not None
    assert grown > throttled_at
    clock.now += 60
    assert rate.rate() is None
    assert await rate.pace(None) == 0.0


async def test_never_above_the_configured_limit() -> None:
    """The learned rate never passes the route's own limit: reaching it ends pacing."""
    rate, clock = learner(ceiling=50)
    send(rate, clock, 200, 2)  # sending faster than the limit (other workers, retries)
    rate.throttled(clock.now)
    learned = rate.rate()
    assert learned is not None
    assert learned <= 50 * BETA + 1e-9
    for _ in range(200):
        clock.now += 0.1
        current = rate.rate()
        if current is None:
            break
        assert current < 50
    assert rate.rate() is None


async def test_never_below_the_floor() -> None:
    """However many throttles, requests still leave at MIN_RATE a second."""
    rate, clock = learner()
    for _ in range(30):
        clock.now += 0.01
        rate.throttled(clock.now)
    assert rate.rate() == MIN_RATE


async def test_a_slot_past_the_deadline_is_refused_at_once() -> None:
    """A request whose slot lies past its deadline gets RateLimitedError without
    waiting, with the wait it would have had."""
    rate, clock = learner()
    rate.throttled(clock.now)  # nothing sent yet: the floor, one request each 2 s
    assert await rate.pace(clock.now + 10) == 0.0
    before = clock.now
    with pytest.raises(RateLimitedError) as refused:
        await rate.pace(clock.now + 1)
    assert clock.now == before
    assert refused.value.retry_after == pytest.approx(1 / MIN_RATE)


async def test_a_throttle_while_waiting_reschedules_at_the_new_rate() -> None:
    """Requests waiting for slots handed out before a new 429 take new ones at the cut
    rate instead of leaving at the old one."""
    rate, clock = learner()
    send(rate, clock, 20, 2)
    rate.throttled(clock.now)
    old = rate.rate()
    assert old is not None
    starts: list[float] = []

    async def one() -> None:
        await rate.pace(None)
        starts.append(clock.now)

    async def throttle_soon() -> None:
        await clock.sleep(0.01)  # the first request is out, the rest wait for slots
        rate.throttled(clock.now)

    await clock.run(*(one() for _ in range(6)), throttle_soon())
    new = rate.rate(starts[-1])
    assert new is not None
    last_gap = starts[-1] - starts[-2]
    assert last_gap > 1 / old * 1.2  # spaced at the slower, cut rate
