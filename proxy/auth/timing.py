"""The token policy's arithmetic: when a token is renewed and stops being sent, how long the
token endpoint is left alone after a failure, and how long a lock held elsewhere is. Pure,
so every process computes the same."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from ..config import FetchRetry
from ..state.tokens import RefreshToken, Token, TokenRecord
from .base import Grant, TokenEndpointError

# Skew margin: a tenth of the lifetime, at most 30 s (a 300 s token stops being sent 30 s
# before it expires, a 24 h token 30 s before, a 5 s test token 0.5 s before).
_MARGIN_SHARE: Final = 0.1
_MAX_MARGIN: Final = 30.0
# The longest an issuer's Retry-After is obeyed for.
MAX_RETRY_AFTER: Final = 900.0
# A token lock another process holds is asked for again after this many seconds (jittered,
# so a fleet does not ask in step), never later than that holder's lock ends, and never at
# once: a lock about to expire is asked for after MIN_POLL.
POLL: Final = (0.1, 0.25)
MIN_POLL: Final = 0.01


def token_of(grant: Grant, sent: float, refresh_at: float) -> Token:
    """The token of ``grant``, requested at ``sent``: renewed once ``refresh_at`` of its
    lifetime has passed (two margins before expiry at the latest), never sent in its last
    margin."""
    lifetime = grant.lifetime
    margin = min(lifetime * _MARGIN_SHARE, _MAX_MARGIN)
    return Token(
        value=grant.access_token,
        obtained_at=sent,
        expires_at=sent + lifetime,
        refresh_at=sent + min(lifetime * refresh_at, lifetime - 2 * margin),
        usable_until=sent + lifetime - margin,
    )


def refresh_token_of(grant: Grant, sent: float) -> RefreshToken | None:
    """The refresh token of ``grant``, presented until a margin before it expires (if it
    says when)."""
    if grant.refresh_token is None:
        return None
    life = grant.refresh_lifetime
    if life is None or not math.isfinite(life):
        return RefreshToken(grant.refresh_token, None)
    return RefreshToken(grant.refresh_token, sent + life - min(life * _MARGIN_SHARE, _MAX_MARGIN))


def presentable(refresh: RefreshToken | None, now: float) -> RefreshToken | None:
    """``refresh``, unless the margin before it expires has begun by ``now``."""
    if refresh is None or refresh.usable_until is None or now < refresh.usable_until:
        return refresh
    return None


def backoff(
    retry: FetchRetry,
    failure: TokenEndpointError,
    before: TokenRecord,
    jitter: Callable[[], float],
) -> float:
    """Seconds without a token request after ``failure``; ``before``: the record it follows.

    Transient failures back off exponentially from ``backoff`` to ``max_backoff`` with
    jitter; refused credentials open a circuit of ``rejected_backoff``, doubling up to 16x
    (they must not hammer the vendor or lock the account). An issuer's Retry-After is
    honoured when longer.
    """
    delay: float
    if failure.rejected:
        delay = retry.rejected_backoff * 2 ** min(before.rejections, 4)
    else:
        cap = min(retry.max_backoff, retry.backoff * 2 ** min(before.failures, 30))
        delay = cap / 2 + jitter() * cap / 2  # "equal jitter": spread, never ~0
    if failure.retry_after is not None:
        # Honoured, but not for a year: an absurd Retry-After must not end the service.
        delay = max(delay, min(failure.retry_after, MAX_RETRY_AFTER))
    return delay


def lock_poll(held_for: float, jitter: Callable[[], float]) -> float:
    """Seconds until a token lock held elsewhere is asked for again; ``held_for``: how long
    its holder may still keep it."""
    low, high = POLL
    return max(MIN_POLL, min(low + (high - low) * jitter(), held_for))
