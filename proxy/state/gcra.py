"""The fleet's rate limit as arithmetic: the GCRA script Redis runs, how a limit is leased
(:class:`LeasePlan`), and the lease tokens one process holds (:class:`LeaseBook`).

Nothing here does I/O or reads a clock: proxy/state/lease.py drives it, and the tests run
it against a model of the script on a fake clock.

Redis holds one GCRA per limit with rate ``r`` and a reduced burst ``b_R = b - r*L``. A
process asks for ``k`` tokens; the script grants ``n <= k`` starting at ``S`` on the
server's clock (in the future when others reserved first), and the process may spend them
only within ``[S, S + L]``. A token spent at ``u`` in a window ``[t1, t2]`` then started
in ``[t1 - L, t2]``, and the GCRA lets at most ``b_R + r*(t2 - t1 + L)`` start there, so
the whole fleet spends at most ``b + r*(t2 - t1)`` in any window, however many processes
and whatever their load. Two conditions make the arithmetic hold: no grant is larger than
``b_R`` (a batch's tokens all start at its last token's time), and a lease is spent only
where it surely lies inside ``[S, S + L]`` on the process's clock: the server read its
clock between our send and receive, so a grant with delay ``D`` is usable in
``[receive + D, send + D + L]`` (empty when the reply took longer than ``L``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Final

# Redis numbers pass through Lua's doubles: times stay whole microseconds below 2^53, and
# fractional values are written with 17 significant digits (Lua's own tostring keeps 14).
LEASE_LUA: Final = """
-- KEYS[1] the limit's hash: tat (us, server clock), tol (us), cfg
-- ARGV[1] T: us per token, ARGV[2] tol: the burst Redis holds, in us (b_R * T),
-- ARGV[3] want (>= 1), ARGV[4] horizon: how far ahead (us) a grant may start,
-- ARGV[5] cfg: fingerprint of T, tol and L, ARGV[6] restart: '1' after an outage
-- returns {granted, delay_us until it starts, retry_us until `want` would fit, now_us}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T, tol = tonumber(ARGV[1]), tonumber(ARGV[2])
local want, horizon = tonumber(ARGV[3]), tonumber(ARGV[4])
local st = redis.call('HMGET', KEYS[1], 'tat', 'tol', 'cfg')
local tat = tonumber(st[1])
local dirty = false
if not tat then
  tat = now + tol                                   -- new or lost: no burst to give
  dirty = true
elseif st[3] ~= ARGV[5] then                        -- limit changed: keep what was granted
  tat = math.max(tat - (tonumber(st[2]) or 0) + tol, now + tol)
  dirty = true
elseif ARGV[6] == '1' and tat < now + tol then      -- fallback shares were spent: no burst
  tat = now + tol
  dirty = true
end
local base = math.max(tat, now)
local n = math.floor((now + horizon + tol - base) / T)
if n > want then n = want end
if n < 0 then n = 0 end
local start = now
if n > 0 then
  tat = base + n * T
  start = math.max(tat - tol, now)
  dirty = true
end
if dirty then
  redis.call('HSET', KEYS[1], 'tat', string.format('%.17g', tat),
             'tol', string.format('%.17g', tol), 'cfg', ARGV[5])
  redis.call('PEXPIRE', KEYS[1], 604800000)
end
local retry = math.max(tat, now) + want * T - tol - now - horizon
if retry < 0 then retry = 0 end
return {n, math.ceil(start - now), math.ceil(retry), now}
"""
LEASE_SHA: Final = hashlib.sha1(LEASE_LUA.encode(), usedforsecurity=False).hexdigest()

# A lease shorter than this could not outlive a round trip to Redis: never spendable.
LEASE_FLOOR: Final = 0.005
# Seconds over which the rate a process spends at is averaged (it sizes the slices).
RATE_WINDOW: Final = 0.1
# Prefetch only when a slice is likely to be spent before it expires.
PREFETCH_MIN: Final = 0.5
# Slices shrink by what expired unspent (at most halving at once) and grow back by this
# factor with every slice spent in full.
FIT_MIN: Final = 0.1
FIT_GROWTH: Final = 1.05


@dataclass(frozen=True, slots=True)
class LeasePlan:
    """How one limit is leased: the GCRA Redis runs for it and the size of a slice."""

    rate: float  # tokens a second the fleet's bucket refills at
    lease: float  # L: seconds a grant may be spent within, from its start
    burst: float  # b_R: what the fleet's bucket may hold
    slice_max: int  # the most tokens one call asks for
    horizon: float  # seconds ahead a grant may start: the limit's max_wait

    @classmethod
    def of(cls, rate: float, burst: float, lease: float, max_wait: float) -> LeasePlan:
        """The plan for ``burst + rate*t`` in every window (``rate`` a second).

        ``L = min(lease, burst / 2rate)`` holds back ``rate*L`` of the burst. A burst too
        small for that (under 2 tokens, or a lease shorter than LEASE_FLOOR) is kept by a
        slower bucket of one token instead: ``(burst - 1)/L`` a second, or one token per
        ``1/rate + L`` (whatever the lease, two spends are then 1/rate apart)."""
        burst = max(1.0, burst)
        length = max(min(lease, burst / (2 * rate)), min(lease, LEASE_FLOOR))
        if burst - rate * length >= 1:
            bucket_rate, held = rate, burst - rate * length
        else:
            bucket_rate = max((burst - 1) / length, 1 / (1 / rate + length))
            held = 1.0
        slice_max = max(1, min(math.floor(bucket_rate * length), math.floor(held)))
        return cls(bucket_rate, length, held, slice_max, max_wait)

    @property
    def fingerprint(self) -> str:
        """What the script compares to notice a limit changed under it."""
        return f"{self.token_us!r}/{self.tolerance_us!r}/{self.lease!r}"

    @property
    def token_us(self) -> float:
        return 1e6 / self.rate

    @property
    def tolerance_us(self) -> float:
        return self.burst * 1e6 / self.rate

    def args(self, want: int, restart: bool) -> tuple[str, ...]:
        """ARGV for LEASE_LUA (repr: the shortest text that reads back as the same float)."""
        return (
            repr(self.token_us),
            repr(self.tolerance_us),
            str(want),
            repr(round(self.horizon * 1e6)),
            self.fingerprint,
            "1" if restart else "0",
        )


class LeaseBook:
    """The lease tokens one process holds for one limit, and when to ask for more; times
    are this process's monotonic clock, read by the caller.

    A held lease is ``[tokens, usable_from, usable_until, granted]``. Tokens not spent by
    ``usable_until`` are dropped (``expired``), never returned, and the fleet's rate they
    took is lost to every process. A slice is ``k = clamp(ceil(rate spent * L * fit), 1,
    slice_max)``; ask when the balance falls below ``k/2`` (only for a process spending
    enough to use it) or the line is longer than the balance.

    ``fit`` learns what the rate estimate misses: clients that pause between requests
    (the typical keep-alive client) and overlapping prefetched leases leave part of a
    slice unspent though the average rate would use it all. A slice that expires with
    tokens left shrinks the next ones by that share (at most halving); each slice spent
    in full grows them back by 5%. In the fleet bench this took expired tokens at 5,000/s
    from 3.8% of those granted to 1.3%. A slice that expires whole stops prefetching until
    the next spend, so a process whose clients left reserves at most one more slice.
    """

    __slots__ = (
        "_est",
        "_est_at",
        "_fit",
        "_held",
        "_idle",
        "_low",
        "_retry_at",
        "_taken",
        "balance",
        "expired",
        "granted",
        "plan",
        "spent",
    )

    def __init__(self, plan: LeasePlan, now: float) -> None:
        self.plan = plan
        self._held: list[list[float]] = []
        self.balance = 0  # tokens held and not expired, usable now or later
        self.granted = 0
        self.spent = 0
        self.expired = 0
        self._taken = 0  # spent since the rate estimate was updated
        self._est = 0.0
        self._est_at = now
        self._fit = 1.0  # what share of its rate estimate a slice may be (see _drop)
        self._idle = False  # a whole slice expired unspent: no prefetch before a spend
        self._low = 0.0
        self._retry_at = now

    @property
    def rate(self) -> float:
        """Tokens a second this process has been spending (averaged over RATE_WINDOW)."""
        return self._est

    def serves(self, position: int) -> tuple[float, int]:
        """When the held lease with the ``position``-th token (1: the next) opens, by the
        order leases open in; past the balance, the last one's opening and how many
        tokens are still missing."""
        held = sorted(self._held, key=lambda lease: lease[1])
        opens = -math.inf
        for lease in held:
            opens = lease[1]
            position -= int(lease[0])
            if position <= 0:
                return opens, 0
        return opens, position

    def usable(self, now: float) -> bool:
        """True when :meth:`take` would succeed."""
        for lease in self._held:  # noqa: SIM110 (a loop: any() over a generator costs 2x here)
            if lease[1] <= now <= lease[2]:
                return True
        return False

    def take(self, now: float) -> bool:
        """Spend one token, from the usable lease that expires first."""
        best = None
        for lease in self._held:
            if lease[1] <= now <= lease[2] and (best is None or lease[2] < best[2]):
                best = lease
        if best is None:
            return False
        best[0] -= 1
        if not best[0]:
            self._held.remove(best)
            self._fit = min(1.0, self._fit * FIT_GROWTH)
        self.balance -= 1
        self.spent += 1
        self._taken += 1
        self._idle = False
        return True

    def held(self) -> list[tuple[int, float, float]]:
        """The leases held: (tokens, usable_from, usable_until)."""
        return [(int(n), start, end) for n, start, end, _ in self._held]

    def low(self) -> bool:
        """The balance fell below half a slice: time to prefetch."""
        return self.balance < self._low

    def want(self, now: float, backlog: int) -> int:
        """How many tokens to ask for now (0: none), with ``backlog`` requests waiting."""
        self._drop(now)
        elapsed = now - self._est_at
        if elapsed > 0:
            weight = 1 - math.exp(-elapsed / RATE_WINDOW)
            self._est += weight * (self._taken / elapsed - self._est)
            self._taken = 0
            self._est_at = now
        plan = self.plan
        expected = self._est * plan.lease * self._fit
        k = min(max(math.ceil(expected), 1), plan.slice_max)
        self._low = k / 2 if expected >= PREFETCH_MIN and not self._idle else 0.0
        if now < self._retry_at:
            return 0
        if backlog > self.balance:
            return min(max(backlog - self.balance, k), plan.slice_max)
        return k if self.balance < self._low else 0

    def granted_at(
        self, sent: float, received: float, want: int, reply: tuple[int, int, int]
    ) -> None:
        """Record a reply ``(granted, delay_us, retry_us)`` to a call sent and received at
        these times."""
        n, delay_us, retry_us = reply
        if n > 0:
            delay = delay_us / 1e6
            # delay_us is rounded up: the end moves a microsecond earlier to stay inside.
            lease = [float(n), received + delay, sent + delay + self.plan.lease - 1e-6, float(n)]
            self.granted += n
            if lease[2] >= lease[1]:
                self._held.append(lease)
                self.balance += n
            else:
                self.expired += n  # the reply came too late to spend any of it
        if n < want and retry_us > 0:
            self._retry_at = received + retry_us / 1e6

    def forget_retry(self) -> None:
        """Ask again without waiting for the horizon (the bucket was restarted)."""
        self._retry_at = -math.inf

    def next_open(self, now: float) -> float | None:
        """When the next held lease becomes usable, if one is still to come."""
        opens = [lease[1] for lease in self._held if lease[1] > now]
        return min(opens) if opens else None

    def next_change(self, now: float, backlog: int) -> float | None:
        """The next time :meth:`want` may answer differently with no spend in between (a
        lease expiring, the horizon freeing up, or, for a line that may grow, a lease
        period from now); None: not before something is spent or asked for."""
        times = [lease[2] for lease in self._held]
        if self._retry_at > now:
            times.append(self._retry_at)
        if backlog:
            times.append(now + self.plan.lease)
        return min(times) if times else None

    def drop_future(self, now: float) -> None:
        """Drop leases not yet usable: an outage begins, and from now on this process
        spends its own share; only leases that started before that stay within the bound."""
        self._drop(now, future=True)

    def _drop(self, now: float, future: bool = False) -> None:
        kept = []
        for lease in self._held:
            if lease[2] < now or (future and lease[1] > now):
                left = int(lease[0])
                self.expired += left
                self.balance -= left
                if lease[2] < now:
                    # The slice was more than this process could spend within the lease:
                    # size the next ones by what it did spend.
                    self._fit = max(FIT_MIN, self._fit / 2, self._fit * (1 - left / lease[3]))
                    self._idle = self._idle or left == lease[3]
            else:
                kept.append(lease)
        if len(kept) != len(self._held):
            self._held = kept
