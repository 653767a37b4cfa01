"""One rate limit for the fleet (proxy/state/gcra.py, proxy/state/lease.py): the lease
algorithm on a fake timeline (every window of every run within ``burst + rate*t``), and a
RateLimit over a capacity that fails."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.config import RateLimitConfig
from proxy.errors import StateBackendError
from proxy.limits import RateLimit
from proxy.state.gcra import LeasePlan

from .leasemodel import greedy, simulate, worst_excess

# ----- the plan ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst", "lease", "expected"),
    [
        # Travtus after the transit margin: 200 of the burst held back, slices of 200.
        (10000, 4800, 0.02, LeasePlan(10000, 0.02, 4600, 200, 5.0)),
        (500, 90, 0.02, LeasePlan(500, 0.02, 80, 10, 5.0)),
        # Half the burst at most is held back: a shorter lease.
        (1000, 10, 0.02, LeasePlan(1000, 0.005, 5, 5, 5.0)),
        # A slow limit: one token at a time.
        (5 / 60, 10, 0.02, LeasePlan(5 / 60, 0.02, 10 - 0.02 * 5 / 60, 1, 5.0)),
        # Bursts too small to hold a lease back keep their bound with a slower bucket.
        (10000, 5, 0.02, LeasePlan(800, 0.005, 1, 1, 5.0)),
        (100, 1, 0.02, LeasePlan(1 / (0.01 + 0.005), 0.005, 1, 1, 5.0)),
    ],
)
def test_a_plan_holds_back_a_lease_of_the_burst(
    rate: float, burst: float, lease: float, expected: LeasePlan
) -> None:
    """Redis keeps ``burst - rate*L`` and no slice is larger than that."""
    plan = LeasePlan.of(rate, burst, lease, 5.0)
    assert plan.rate == pytest.approx(expected.rate)
    assert plan.lease == pytest.approx(expected.lease)
    assert plan.burst == pytest.approx(expected.burst)
    assert plan.slice_max == expected.slice_max
    assert plan.slice_max <= plan.burst
    assert plan.burst + plan.rate * plan.lease <= max(burst, 1) + 1e-9 or plan.burst == 1


# ----- the algorithm on a fake timeline ------------------------------------------------


def poisson(rng: random.Random, rate: float, duration: float) -> list[float]:
    out: list[float] = []
    t = 0.0
    while rate > 0:
        t += rng.expovariate(rate)
        if t > duration:
            return out
        out.append(t)
    return out


def clumps(rng: random.Random, rate: float, duration: float) -> list[float]:
    """The same mean rate in bursts: clumps of up to 50 at once."""
    out: list[float] = []
    for t in poisson(rng, rate / 25, duration):
        out += [t] * rng.randint(1, 50)
    return out


def waves(
    rng: random.Random, rate: float, shares: list[float], duration: float
) -> list[list[float]]:
    """Idle gaps (the fleet's bucket fills up), then a trickle everywhere (processes
    prefetch leases they do not spend at once), then a clump at every process at the same
    moment: the pattern that would spend stale leases on top of a full bucket."""
    out: list[list[float]] = [[] for _ in shares]
    t = 0.0
    while t < duration:
        t += rng.uniform(0, 0.3)
        trickle = rng.uniform(0.005, 0.1)
        for times, share in zip(out, shares, strict=True):
            times += [t + a for a in poisson(rng, rate * share * rng.uniform(0.1, 2), trickle)]
        t += trickle * rng.uniform(0.2, 1.2)
        size = rng.uniform(0.01, 0.5) * rate
        for times, share in zip(out, shares, strict=True):
            times += [t] * round(size * share)
    return [sorted(a for a in times if a <= duration) for times in out]


def arrivals(
    rng: random.Random, rate: float, shares: list[float], duration: float, pattern: str
) -> list[list[float]]:
    total = sum(shares)
    shares = [s / total for s in shares]
    if pattern == "waves":
        return waves(rng, rate, shares, duration)
    make = clumps if pattern == "clumps" else poisson
    return [make(rng, rate * s, duration) for s in shares]


def round_trips(
    rng: random.Random, base: float, jitter: float
) -> Callable[[], tuple[float, float]]:
    def one() -> tuple[float, float]:
        rtt = base * (1 + rng.expovariate(1 / jitter)) if jitter else base
        split = rng.uniform(0.1, 0.9)
        return rtt * split, rtt * (1 - split)

    return one


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    processes=st.integers(1, 6),
    rate=st.floats(20, 1500),
    burst=st.one_of(st.floats(1, 16), st.floats(-1, 1.8).map(lambda e: -(10**e))),
    lease=st.floats(0.002, 0.05),
    max_wait=st.sampled_from([0.0, 0.05, 0.5, 2.0]),
    load=st.floats(0.1, 4),
    shares=st.lists(st.floats(0.01, 1), min_size=6, max_size=6),
    rtt=st.floats(0.0001, 0.08),
    jitter=st.sampled_from([0.0, 0.3, 2.0]),
    pattern=st.sampled_from(["poisson", "clumps", "waves"]),
    full=st.booleans(),
)
def test_no_window_ever_holds_more_than_burst_plus_rate_times_its_length(
    seed: int,
    processes: int,
    rate: float,
    burst: float,
    lease: float,
    max_wait: float,
    load: float,
    shares: list[float],
    rtt: float,
    jitter: float,
    pattern: str,
    full: bool,
) -> None:
    """Whatever the arrivals, process count, load skew, round trips (replies slower than
    a lease included), limit, and whether the fleet's bucket starts full or empty: the
    tokens the fleet spends in any window of t seconds are at most burst + rate*t."""
    rng = random.Random(seed)
    if burst < 0:  # in leases' worth of the rate
        burst = max(1.0, round(-burst * rate * lease, 1))
    plan = LeasePlan.of(rate, burst, lease, max_wait)
    duration = 1.0
    offered = arrivals(rng, rate * load, shares[:processes], duration, pattern)
    run = simulate(plan, offered, round_trips(rng, rtt, jitter), duration, rng, full=full)
    assert worst_excess(run.spends, burst, rate) <= 1e-6


Spender = Callable[[random.Random, LeasePlan], Callable[[float, float], float]]
SPENDERS: dict[str, Spender] = {
    "first moment": lambda rng, plan: lambda start, end: start,
    "last moment": lambda rng, plan: lambda start, end: end,
    "anywhere": lambda rng, plan: lambda start, end: rng.uniform(start, end),
    "either end": lambda rng, plan: lambda start, end: rng.choice((start, end)),
    "end, then start": lambda rng, plan: switching(rng.uniform(0, 4 * plan.lease)),
}


def switching(at: float) -> Callable[[float, float], float]:
    """Leases usable before ``at`` are spent as late as they may, later ones as early:
    what packs the most into the windows that begin near ``at``."""
    return lambda start, end: end if start < at else start


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(  # stale leases spent on top of a full bucket: needs rate*L held back
    seed=0, processes=3, rate=1000.0, burst=100.0, lease=0.02, max_wait=0.5, rtt=0.001,
    jitter=0.3, spender="end, then start", full=True,
)  # fmt: skip
@example(  # a burst under 2*rate*LEASE_FLOOR: no slice may exceed what Redis holds
    seed=0, processes=3, rate=1000.0, burst=7.0, lease=0.02, max_wait=0.5, rtt=0.001,
    jitter=0.3, spender="end, then start", full=False,
)  # fmt: skip
@given(
    seed=st.integers(0, 2**32),
    processes=st.integers(1, 6),
    rate=st.floats(20, 1500),
    burst=st.one_of(st.floats(1, 16), st.floats(-1, 1.8).map(lambda e: -(10**e))),
    lease=st.floats(0.002, 0.05),
    max_wait=st.sampled_from([0.0, 0.05, 0.5]),
    rtt=st.floats(0.0001, 0.03),
    jitter=st.sampled_from([0.0, 0.3, 2.0]),
    spender=st.sampled_from(sorted(SPENDERS)),
    full=st.booleans(),
)
def test_leases_spent_anywhere_they_are_usable_keep_the_bound(
    seed: int,
    processes: int,
    rate: float,
    burst: float,
    lease: float,
    max_wait: float,
    rtt: float,
    jitter: float,
    spender: str,
    full: bool,
) -> None:
    """The bound rests on the leases alone, not on how requests happen to use them: a
    fleet asking as fast as replies come and spending every token at the first moment, the
    last moment, or anywhere its lease is usable stays within burst + rate*t."""
    rng = random.Random(seed)
    if burst < 0:  # in leases' worth of the rate
        burst = max(1.0, round(-burst * rate * lease, 1))
    plan = LeasePlan.of(rate, burst, lease, max_wait)
    spend = SPENDERS[spender](rng, plan)
    spends = greedy(plan, processes, round_trips(rng, rtt, jitter), spend, 0.5, rng, full=full)
    assert worst_excess(spends, burst, rate) <= 1e-6


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    processes=st.integers(1, 6),
    rate=st.floats(200, 1500),
    load=st.floats(1.5, 3),
    shares=st.lists(st.floats(0.05, 1), min_size=6, max_size=6),
    rtt=st.floats(0.0002, 0.003),
)
def test_a_saturated_fleet_spends_at_least_98_percent_of_the_rate(
    seed: int,
    processes: int,
    rate: float,
    load: float,
    shares: list[float],
    rtt: float,
) -> None:
    """Offered more than the limit (Poisson arrivals), spread unevenly, the fleet spends
    >= 98% of the rate once the queue has formed (burst = rate/2, lease 20 ms, round trips
    of a few ms)."""
    rng = random.Random(seed)
    plan = LeasePlan.of(rate, rate / 2, 0.02, 1.0)
    duration, settle = 1.5, 0.3
    offered = arrivals(rng, rate * load, shares[:processes], duration, "poisson")
    run = simulate(plan, offered, round_trips(rng, rtt, 0.3), duration, rng)
    steady = sum(1 for t in run.spends if t >= settle)
    assert steady >= 0.98 * rate * (duration - settle)


class Failing:
    """A Capacity that has no slots, and fails whoever asks once told to."""

    def __init__(self) -> None:
        self.fail = asyncio.Event()
        self.asked = 0

    def has_capacity(self) -> bool:
        return False

    async def acquire(self) -> None:
        self.asked += 1
        await self.fail.wait()
        raise StateBackendError("route /v")

    async def close(self) -> None:
        return None


async def test_a_capacity_that_fails_fails_everyone_in_line() -> None:
    """When the capacity raises, every request waiting in line gets that error at once
    (none is left to time out), and the next request asks the capacity again."""
    capacity = Failing()
    limit = RateLimit("route /v", RateLimitConfig(rate=10, burst=1, max_wait=60), capacity)
    waiters = [asyncio.create_task(limit.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    capacity.fail.set()
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 1)
    assert all(isinstance(r, StateBackendError) for r in results)
    assert limit.status()["waiting"] == 0
    with pytest.raises(StateBackendError):
        await asyncio.wait_for(limit.acquire(), 1)
    assert capacity.asked == 2
    await limit.close()
