"""Reading the upstream's throttling headers: Retry-After, RateLimit fields, backoff."""

from __future__ import annotations

import pytest

from proxy.config import RetryConfig
from proxy.headers import retry_after_seconds
from proxy.retry import RetryBudget, exhausted_for, retry_delay

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("0", 0.0),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Fri, 15 Jan 2027 08:00:30 GMT", 30.0),  # NOW is 08:00:00 that day
        ("Fri, 15 Jan 2027 07:00:00 GMT", 0.0),  # in the past: now
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("Fri, 15 Jan 2027 08:00:30", None),  # no zone: unreadable, not guessed
    ],
)
def test_retry_after_forms(value: str | None, seconds: float | None) -> None:
    """Delta-seconds and HTTP-dates are read; anything else is ignored."""
    assert retry_after_seconds(value, now=NOW) == seconds


@pytest.mark.parametrize(
    ("headers", "pause"),
    [
        ({}, None),
        ({"RateLimit-Remaining": "0", "RateLimit-Reset": "5"}, 5.0),
        ({"RateLimit-Remaining": "3", "RateLimit-Reset": "5"}, None),
        ({"RateLimit-Remaining": "0"}, None),
        ({"RateLimit-Remaining": "0", "RateLimit-Reset": str(int(NOW) + 9)}, 9.0),
        ({"RateLimit": "limit=100, remaining=0, reset=12"}, 12.0),
        ({"RateLimit": "limit=100, remaining=1, reset=12"}, None),
        ({"RateLimit": '"default";r=0;t=4'}, 4.0),
        ({"RateLimit": '"default";r=10;t=4'}, None),
    ],
)
def test_ratelimit_headers(headers: dict[str, str], pause: float | None) -> None:
    """Only a quota that says nothing is left, with a reset, pauses the route."""
    assert exhausted_for(headers, now=NOW) == pause


def test_backoff_grows_with_full_jitter_within_bounds() -> None:
    """Without Retry-After: between backoff and min(max_backoff, backoff * 2^(n-1))."""
    config = RetryConfig(backoff=0.25, max_backoff=1.0)
    assert retry_delay(config, 1, {}, jitter=lambda: 1.0) == (0.25, False)
    assert retry_delay(config, 3, {}, jitter=lambda: 1.0) == (1.0, False)
    assert retry_delay(config, 9, {}, jitter=lambda: 1.0) == (1.0, False)
    assert retry_delay(config, 9, {}, jitter=lambda: 0.0) == (0.25, False)
    assert retry_delay(config, 2, {"Retry-After": "3"}) == (3.0, True)


def test_budget_allows_a_share_with_a_floor() -> None:
    """Retries in flight: at least 3, else the configured share of requests in flight."""
    budget = RetryBudget(0.2)
    budget.active, budget.retrying = 5, 2
    assert budget.allows_retry()
    budget.retrying = 3
    assert not budget.allows_retry()
    budget.active = 100
    assert budget.allows_retry()
    budget.retrying = 20
    assert not budget.allows_retry()
