"""Token state of one credential: the token, its refresh token, the failure backoff and the
token-request window, behind the store every process of a fleet could share.

The policy (auth/manager.py) decides when to fetch and how long to back off; a store only
keeps what was decided, so that a shared one (Redis) can replace :class:`LocalTokenStore`:
one token per credential for all processes, one fetch at a time among them (the lock), no
late writer replacing a newer token (the generation), one backoff for all (the failure
record). Times a shared store holds are on its clock, :meth:`TokenStore.now`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Final, Protocol

from ..clock import MONOTONIC, Clock
from ..config import RateConfig


@dataclass(frozen=True, slots=True)
class Token:
    """An access token; times on the store's clock, counted from when its request was sent."""

    value: str
    obtained_at: float
    expires_at: float
    refresh_at: float  # renew in the background from here on
    usable_until: float  # never sent from here on (skew margin)


@dataclass(frozen=True, slots=True)
class RefreshToken:
    value: str
    usable_until: float | None  # store clock; None: until the issuer refuses it


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """All a store holds for one credential; each change replaces the whole record."""

    generation: int = 0  # tokens committed so far
    token: Token | None = None
    refresh: RefreshToken | None = None
    failures: int = 0  # transient failures since the last token
    rejections: int = 0  # refusals of our credentials since the last token
    retry_at: float = 0.0  # store clock: no token request before this
    last_outcome: str | None = None  # "ok" or the last failure's reason
    last_fetch: float | None = None  # wall clock (unix seconds) of the last outcome


class LockOutcome(Enum):
    """How :meth:`TokenStore.lock` ended."""

    ACQUIRED = "acquired"  # this caller fetches
    SETTLED = "settled"  # another fetch decided: read() shows its outcome
    HELD = "held"  # another holder still fetches: ask again later


@dataclass(frozen=True, slots=True)
class LockResult:
    """The answer of :meth:`TokenStore.lock`; ``held_for`` matters only when HELD: how long
    the holder may still hold the lock (its TTL left; inf for a lock without one)."""

    outcome: LockOutcome
    held_for: float = 0.0


ACQUIRED: Final = LockResult(LockOutcome.ACQUIRED)
SETTLED: Final = LockResult(LockOutcome.SETTLED)
_HELD_HERE: Final = LockResult(LockOutcome.HELD, math.inf)  # LocalTokenStore's: no TTL


class TokenStore(Protocol):
    """Where one credential's token state lives, for one process or for a fleet.

    Requests only call :meth:`now` and :meth:`read`, which never wait. A fetch is one
    :meth:`lock`; when ACQUIRED, :meth:`acquire_request` before each token request it
    sends, then exactly one of :meth:`commit`, :meth:`fail` or :meth:`release` ends the
    lock (a shared store checks the lock's owner: an outcome sent after the lock ended is
    lost). The store decides nothing: how long to back off and which refresh token to
    keep are the caller's choices; the store makes them atomic and refuses a stale write.
    """

    def now(self) -> float:
        """The store's clock in seconds; only differences between its readings mean
        anything. Every time in a record is on this clock."""
        ...

    def read(self) -> TokenRecord:
        """The latest record, without waiting (a shared store answers from the copy it
        keeps up to date; :meth:`lock` refreshes it)."""
        ...

    async def lock(self, generation: int) -> LockResult:
        """Try to take the right to fetch the token that replaces ``generation``.

        ACQUIRED: this caller fetches, and ends the lock with exactly one of commit(),
        fail() or release(); no other caller holds it meanwhile (a shared store bounds it
        by a TTL longer than a token request). SETTLED: the fetch is not this caller's to
        make: a newer generation is committed, or (a shared store whose copy was behind)
        another fetch's failure set a backoff; :meth:`read` shows which. HELD: another
        caller holds the lock; ``held_for`` is how long it may still hold it. The caller
        keeps a usable token meanwhile, or waits for the holder's outcome, and asks again
        after a poll, never at once. The caller checks the backoff (``read().retry_at``)
        before it asks.

        A store may wait a bounded time for the holder's outcome (then SETTLED, or ACQUIRED
        when the holder released the lock); when that wait runs out it answers HELD, with
        the holder's time left, and never waits longer.
        """
        ...

    async def acquire_request(self) -> float:
        """Count one token request against the credential's ``token_rate``, in one step:
        0.0 when it fits (and is counted), else the seconds until one would (nothing
        counted). Exact: at most ``rate`` requests in any ``per`` seconds."""
        ...

    async def commit(
        self, token: Token, refresh: RefreshToken | None, generation: int
    ) -> TokenRecord | None:
        """Install ``token`` and ``refresh`` as the generation after ``generation``, clear
        the failure record and release the lock; return the new record. None, with
        nothing changed, when the held generation is no longer ``generation``: a late
        writer never replaces a newer token."""
        ...

    async def fail(
        self,
        reason: str,
        *,
        rejected: bool,
        delay: float,
        spent: str | None,
        issued: bool = False,
        refresh: RefreshToken | None = None,
    ) -> TokenRecord:
        """Record a failed fetch and release the lock; return the new record. Counts it as
        a rejection or a transient failure, allows no token request for ``delay`` seconds
        from now(), and drops the refresh token if it is still ``spent`` (presented, so
        possibly consumed by the issuer).

        ``issued``: the issuer did answer, with a token unusable on arrival (the fetch
        outlasted it), which is never committed. It accepted our credentials, so the
        counts start over from this failure, and ``refresh`` (the refresh token its answer
        leaves us: the rotated one, the one presented when it does not rotate, or None)
        replaces the record's, as a commit would have.
        """
        ...

    async def release(self, *, spent: str | None) -> None:
        """End the lock without an outcome (the fetch was cancelled), dropping the refresh
        token if it is still ``spent`` (presented, so possibly consumed by the issuer:
        no other fetch may present it again); a no-op when the lock is not held."""
        ...


class RequestWindow:
    """At most ``limit`` events in any ``period`` seconds, exactly.

    Not aiolimiter: its leaky bucket admits a full bucket *plus* the drained rate within one
    window (200 in a minute for 100/min), while Travelyzer means at most 100 in any minute.
    Token requests are rare, so keeping their times costs nothing.
    """

    __slots__ = ("_limit", "_period", "_times")

    def __init__(self, limit: int, period: float) -> None:
        self._limit = max(1, limit)
        self._period = period
        self._times: deque[float] = deque()

    def acquire(self, now: float) -> float:
        """0.0 and the event counted when one may happen at ``now``; else the seconds
        until one may, nothing counted."""
        # One expression decides both whether an event has left the window and how long
        # until it does: computed two ways, float rounding let a wait of 0.0 through
        # without evicting anything, admitting any number at that instant.
        while self._times and self._times[0] + self._period <= now:
            self._times.popleft()
        if len(self._times) < self._limit:
            self._times.append(now)
            return 0.0
        return self._times[0] + self._period - now


class LocalTokenStore:
    """A TokenStore for one process: the record in memory, times on ``clock``.

    :meth:`lock` never waits: held, it answers HELD at once, ``held_for`` inf (the holder
    is this process's own fetch; there is no TTL)."""

    __slots__ = ("_clock", "_held", "_record", "_wall", "_window")

    def __init__(
        self,
        token_rate: RateConfig | None = None,
        *,
        clock: Clock = MONOTONIC,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._window = (
            None if token_rate is None else RequestWindow(int(token_rate.rate), token_rate.per)
        )
        self._record = TokenRecord()
        self._held = False

    def now(self) -> float:
        return self._clock.monotonic()

    def read(self) -> TokenRecord:
        return self._record

    async def lock(self, generation: int) -> LockResult:
        if self._record.generation != generation:
            return SETTLED
        if self._held:
            return _HELD_HERE
        self._held = True
        return ACQUIRED

    async def acquire_request(self) -> float:
        return 0.0 if self._window is None else self._window.acquire(self._clock.monotonic())

    async def commit(
        self, token: Token, refresh: RefreshToken | None, generation: int
    ) -> TokenRecord | None:
        self._held = False
        if self._record.generation != generation:
            return None
        self._record = TokenRecord(
            generation=generation + 1,
            token=token,
            refresh=refresh,
            last_outcome="ok",
            last_fetch=self._wall(),
        )
        return self._record

    async def fail(
        self,
        reason: str,
        *,
        rejected: bool,
        delay: float,
        spent: str | None,
        issued: bool = False,
        refresh: RefreshToken | None = None,
    ) -> TokenRecord:
        self._held = False
        record = self._record
        failures, rejections = (0, 0) if issued else (record.failures, record.rejections)
        if not issued:
            refresh = _unless_spent(record.refresh, spent)
        self._record = replace(
            record,
            refresh=refresh,
            failures=failures + (not rejected),
            rejections=rejections + rejected,
            retry_at=self._clock.monotonic() + delay,
            last_outcome=reason,
            last_fetch=self._wall(),
        )
        return self._record

    async def release(self, *, spent: str | None) -> None:
        if self._held:
            self._held = False
            refresh = _unless_spent(self._record.refresh, spent)
            if refresh is not self._record.refresh:
                self._record = replace(self._record, refresh=refresh)


def _unless_spent(refresh: RefreshToken | None, spent: str | None) -> RefreshToken | None:
    """``refresh``, unless it is the one presented (``spent``): the issuer may have
    consumed it."""
    if spent is not None and refresh is not None and refresh.value == spent:
        return None
    return refresh
