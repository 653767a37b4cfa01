"""LocalTokenStore and its token-request window, on a hand-moved clock (no sleeps).

The policy that drives a store is in test_token_manager.py.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from proxy.config import RateConfig
from proxy.state.tokens import (
    ACQUIRED,
    SETTLED,
    LocalTokenStore,
    LockOutcome,
    LockResult,
    RefreshToken,
    RequestWindow,
    Token,
)

from .fakeclock import Clock


def token(value: str, at: float = 1000.0) -> Token:
    return Token(value, at, at + 300, at + 240, at + 270)


def store(clock: Clock | None = None, token_rate: RateConfig | None = None) -> LocalTokenStore:
    return LocalTokenStore(token_rate, clock=clock or Clock(), wall=lambda: 1_700_000_000.0)


HELD_HERE = LockResult(LockOutcome.HELD, math.inf)  # held by this process's own fetch


async def test_a_commit_replaces_the_generation_it_names() -> None:
    """A commit installs the next generation and clears the failure record."""
    tokens = store()
    await tokens.fail("http_503", rejected=False, delay=1.0, spent=None)
    assert await tokens.lock(0) == ACQUIRED
    record = await tokens.commit(token("a"), RefreshToken("r", None), 0)
    assert record is not None
    assert record == tokens.read()
    assert (record.generation, record.token, record.refresh) == (
        1,
        token("a"),
        RefreshToken("r", None),
    )
    assert (record.failures, record.rejections, record.retry_at) == (0, 0, 0.0)
    assert (record.last_outcome, record.last_fetch) == ("ok", 1_700_000_000.0)


async def test_a_late_writer_never_replaces_a_newer_token() -> None:
    """A commit naming a generation that is no longer held changes nothing."""
    tokens = store()
    assert await tokens.lock(0) == ACQUIRED
    await tokens.commit(token("newer"), None, 0)
    assert await tokens.lock(1) == ACQUIRED
    await tokens.commit(token("newest"), None, 1)
    before = tokens.read()
    assert await tokens.commit(token("late"), RefreshToken("late-r", None), 1) is None
    assert await tokens.commit(token("later"), None, 0) is None
    assert tokens.read() is before
    assert before.generation == 2
    assert before.token == token("newest")


async def test_one_lock_holder_at_a_time_and_only_for_the_current_generation() -> None:
    """lock() refuses while held (HELD, at once: it never waits) and for a generation
    already replaced (SETTLED)."""
    tokens = store()
    assert await tokens.lock(0) == ACQUIRED
    assert await tokens.lock(0) == HELD_HERE
    await tokens.commit(token("a"), None, 0)
    assert await tokens.lock(0) == SETTLED  # generation 1 is there: read it, do not fetch
    assert await tokens.lock(1) == ACQUIRED
    assert await tokens.lock(0) == SETTLED  # held or not, a replaced generation is settled
    await tokens.release(spent=None)
    await tokens.release(spent=None)  # releasing twice is harmless
    assert await tokens.lock(1) == ACQUIRED
    await tokens.fail("timeout", rejected=False, delay=0.5, spent=None)
    assert await tokens.lock(1) == ACQUIRED  # fail() released it


async def test_failures_count_back_off_and_drop_a_spent_refresh_token() -> None:
    """fail() counts transient failures and rejections apart, backs off from now() and
    drops the refresh token only when it is the one presented."""
    clock = Clock()
    tokens = store(clock)
    await tokens.lock(0)
    await tokens.commit(token("a"), RefreshToken("r1", 2000.0), 0)
    clock.now = 1100.0
    record = await tokens.fail("http_503", rejected=False, delay=2.5, spent="other")
    assert (record.failures, record.rejections) == (1, 0)
    assert record.retry_at == 1102.5
    assert record.refresh == RefreshToken("r1", 2000.0)
    assert (record.last_outcome, record.last_fetch) == ("http_503", 1_700_000_000.0)
    record = await tokens.fail("invalid_client", rejected=True, delay=60.0, spent="r1")
    assert (record.failures, record.rejections) == (1, 1)
    assert record.retry_at == 1160.0
    assert record.refresh is None
    assert record.token == token("a")  # a failure never takes the token away
    assert record.generation == 1
    assert tokens.read() is record


async def test_a_failure_after_an_issued_token_starts_over_and_keeps_its_refresh_token() -> None:
    """fail(issued=True): the issuer accepted our credentials, so the counts start over
    from this failure, and the refresh token its answer left replaces the stored one,
    spent or not; nothing is committed."""
    clock = Clock()
    tokens = store(clock)
    await tokens.lock(0)
    await tokens.commit(token("a"), RefreshToken("r1", 2000.0), 0)
    await tokens.fail("http_503", rejected=False, delay=1.0, spent=None)
    await tokens.fail("invalid_client", rejected=True, delay=60.0, spent=None)
    assert await tokens.lock(1) == ACQUIRED
    record = await tokens.fail(
        "expired_on_arrival",
        rejected=False,
        delay=0.5,
        spent="r1",
        issued=True,
        refresh=RefreshToken("r2", 3000.0),
    )
    assert (record.failures, record.rejections, record.retry_at) == (1, 0, 1000.5)
    assert record.refresh == RefreshToken("r2", 3000.0)
    assert (record.generation, record.token) == (1, token("a"))
    assert record.last_outcome == "expired_on_arrival"
    assert await tokens.lock(1) == ACQUIRED  # it released the lock
    record = await tokens.fail("timeout", rejected=False, delay=0.5, spent=None, issued=True)
    assert record.refresh is None  # an answer without a refresh token leaves none


async def test_release_drops_the_refresh_token_it_presented() -> None:
    """release(spent=...) ends the lock and drops the refresh token only if it is still the
    one presented; without the lock it changes nothing."""
    tokens = store()
    await tokens.lock(0)
    await tokens.commit(token("a"), RefreshToken("r1", None), 0)
    await tokens.lock(1)
    await tokens.release(spent="other")
    assert tokens.read().refresh == RefreshToken("r1", None)
    await tokens.release(spent="r1")  # not held any more: a no-op
    assert tokens.read().refresh == RefreshToken("r1", None)
    before = tokens.read()
    assert await tokens.lock(1) == ACQUIRED
    await tokens.release(spent="r1")
    assert tokens.read().refresh is None
    assert tokens.read().token == before.token
    assert (tokens.read().generation, tokens.read().last_outcome) == (1, "ok")
    assert await tokens.lock(1) == ACQUIRED


async def test_without_token_rate_every_request_may_go() -> None:
    """No token_rate: acquire_request() never asks to wait."""
    tokens = store()
    assert [await tokens.acquire_request() for _ in range(1000)] == [0.0] * 1000


async def test_token_rate_is_counted_on_the_store_clock() -> None:
    """The third request of 2 per 60 s waits until the first leaves the window."""
    clock = Clock()
    tokens = store(clock, RateConfig(rate=2, per=60.0))
    assert await tokens.acquire_request() == 0.0
    clock.now += 5
    assert await tokens.acquire_request() == 0.0
    clock.now += 5
    assert await tokens.acquire_request() == 50.0
    assert await tokens.acquire_request() == 50.0  # a refusal is not counted
    clock.now += 50
    assert await tokens.acquire_request() == 0.0


@given(
    limit=st.integers(min_value=1, max_value=5),
    period=st.floats(min_value=0.5, max_value=100.0),
    gaps=st.lists(st.floats(min_value=0.0, max_value=50.0), max_size=60),
)
def test_window_admits_at_most_limit_in_any_period(
    limit: int, period: float, gaps: list[float]
) -> None:
    """Exact: never more than `limit` admitted in any `period`, and a refusal's wait is the
    time until the oldest admission leaves the window, after which one is admitted."""
    window = RequestWindow(limit, period)
    admitted: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        wait = window.acquire(now)
        if wait == 0.0:
            admitted.append(now)
            continue
        assert wait > 0
        assert admitted[-limit] + period - now == wait
        now += wait + 1e-9  # past float rounding of now + wait
        assert window.acquire(now) == 0.0
        admitted.append(now)
    for i, start in enumerate(admitted):
        assert sum(start <= t < start + period for t in admitted[i:]) <= limit
