"""The learned rate (proxy/adaptive.py) on a fake clock: cut on throttling, paced release,
cubic growth back, bounds. Nothing sleeps for real."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from proxy.adaptive import BETA, MIN_RATE, AdaptiveRate
from proxy.errors import RateLimitedError

from .fakeclock import Clock


def learner(ceiling: float | None = None) -> tuple[AdaptiveRate, Clock]:
    clock = Clock()
    return AdaptiveRate("route /v", ceiling, clock=clock), clock


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
    """Requests held back leave one turn apart, a turn being 1/rate at the moment the one
    before left (the rate grows back meanwhile), not all at once."""
    rate, clock = learner()
    send(rate, clock, 10, 2)
    rate.throttled(clock.now)
    starts: list[tuple[float, float]] = []

    async def one() -> None:
        await rate.pace(None)
        current = rate.rate(clock.now)
        assert current is not None
        starts.append((clock.now, current))

    await clock.run(*(one() for _ in range(5)))
    assert len(starts) == 5
    for (before, current), (after, _) in itertools.pairwise(starts):
        assert after - before == pytest.approx(1 / current, rel=0.01)
    assert starts[-1][0] - starts[0][0] > 4 * 0.9 / 10  # slower than the 10/s throttled


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
    now = rate.rate()
    assert now is not None
    assert first is not None
    assert now < first


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


async def test_the_line_is_first_come_first_served() -> None:
    """A request arriving while others wait goes after them, never ahead."""
    rate, clock = learner()
    rate.throttled(clock.now)  # the floor: one request every 2 s
    order: list[str] = []

    async def one(name: str, arrive: float) -> None:
        await clock.sleep(arrive)
        await rate.pace(None)
        order.append(name)

    await clock.run(*(one(f"early{i}", 0.01 * i) for i in range(4)), one("late", 3.0))
    assert order == ["early0", "early1", "early2", "early3", "late"]


async def test_a_request_given_up_frees_its_turn() -> None:
    """Requests whose clients left (cancelled) do not hold up those behind them."""
    rate, clock = learner()
    rate.throttled(clock.now)  # one request every 2 s
    started = clock.now
    done: dict[str, float] = {}

    async def one(name: str) -> None:
        await rate.pace(None)
        done[name] = clock.now - started

    async def leaves(task: asyncio.Task[None]) -> None:
        await clock.sleep(0.5)
        task.cancel()

    first = asyncio.ensure_future(one("first"))
    gone = [asyncio.ensure_future(one(f"gone{i}")) for i in range(5)]
    last = asyncio.ensure_future(one("last"))
    await clock.run(*(leaves(task) for task in gone))
    await clock.run(asyncio.wait([first, last]))
    assert done["first"] == 0.0
    assert done["last"] == pytest.approx(1 / MIN_RATE, abs=0.01)  # next turn, not sixth


async def test_waiting_requests_follow_the_rate_as_it_grows() -> None:
    """A line released while the rate grows back leaves faster and faster, and what is
    left when pacing ends goes at once instead of at the old rate."""
    rate, clock = learner()
    send(rate, clock, 4, 2)
    rate.throttled(clock.now)
    starts: list[float] = []

    async def one() -> None:
        await rate.pace(None)
        starts.append(clock.now)

    await clock.run(*(one() for _ in range(20)))
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[-1] < gaps[1] / 2
    now = rate.rate()
    assert now is None or now > rate.w_max


async def test_pacing_can_be_closed_with_requests_waiting() -> None:
    """close() (shutdown) lets whoever waits go."""
    rate, clock = learner()
    rate.throttled(clock.now)
    waiting = [asyncio.ensure_future(rate.pace(None)) for _ in range(3)]
    for _ in range(5):
        await asyncio.sleep(0)
    await rate.close()
    await asyncio.wait_for(asyncio.gather(*waiting), 1)


async def test_a_retry_goes_before_requests_that_came_after_it() -> None:
    """The line is ordered by arrival at the proxy: a request coming back for a retry
    waits behind older ones only, not behind everyone who came since."""
    rate, clock = learner()
    rate.throttled(clock.now)  # one request every 2 s
    first_arrival = clock.now
    order: list[str] = []

    async def one(name: str, arrival: float, delay: float) -> None:
        await clock.sleep(delay)
        await rate.pace(None, arrival)
        order.append(name)

    await clock.run(
        one("head", clock.now, 0.0),
        *(one(f"new{i}", clock.now + 0.1 + i / 100, 0.1 + i / 100) for i in range(3)),
        one("retry", first_arrival - 5.0, 0.5),  # arrived 5 s ago, back for a retry
    )
    assert order == ["head", "retry", "new0", "new1", "new2"]
