"""lease.lua in Python, and a fleet of processes leasing from it on one fake timeline.

:class:`ScriptModel` does what proxy/state/gcra.py's LEASE_LUA does, operation for
operation on the same doubles (tests/test_lease.py checks it against the real script), so
a simulation over it says something about the real algorithm. :func:`simulate` runs
processes that each hold a real LeaseBook and a line of waiting requests, the way
LeaseCapacity under a RateLimit does, and records when every token was spent.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.state.gcra import LeaseBook, LeasePlan


@dataclass
class Bucket:
    tat: float
    tol: float
    cfg: str


class ScriptModel:
    """The limit hashes of one Redis, changed as LEASE_LUA changes them."""

    def __init__(self) -> None:
        self.hashes: dict[str, Bucket] = {}

    def call(self, key: str, now: int, args: tuple[str, ...]) -> tuple[int, int, int]:
        """The reply of LEASE_LUA on ``key`` with ARGV ``args`` when TIME reads ``now`` us."""
        T, tol = float(args[0]), float(args[1])
        want, horizon = float(args[2]), float(args[3])
        cfg, restart = args[4], args[5]
        nowf = float(now)
        state = self.hashes.get(key)
        dirty = False
        if state is None:
            tat = nowf + tol
            dirty = True
        elif state.cfg != cfg:
            tat = max(state.tat - state.tol + tol, nowf + tol)
            dirty = True
        elif restart == "1" and state.tat < nowf + tol:
            tat = nowf + tol
            dirty = True
        else:
            tat = state.tat
        base = max(tat, nowf)
        n = float(math.floor((nowf + horizon + tol - base) / T))
        n = max(min(n, want), 0.0)
        start = nowf
        if n > 0:
            tat = base + n * T
            start = max(tat - tol, nowf)
            dirty = True
        if dirty:
            self.hashes[key] = Bucket(tat, tol, cfg)
        retry = max(max(tat, nowf) + want * T - tol - nowf - horizon, 0.0)
        return int(n), math.ceil(start - nowf), math.ceil(retry)


@dataclass
class Process:
    book: LeaseBook
    offset: float  # its monotonic clock minus the true time
    arrivals: list[float]  # true times requests come, sorted
    line: deque[float] = field(default_factory=deque)  # arrival times of waiting requests
    asking: bool = False
    wake: float = math.inf  # the next tick already scheduled


@dataclass
class Run:
    """What a simulation did: every spend (true time), per process, and the Redis calls."""

    spends: list[float]
    per_process: list[int]
    calls: int
    expired: int


def simulate(
    plan: LeasePlan,
    arrivals: list[list[float]],
    round_trip: Callable[[], tuple[float, float]],
    duration: float,
    rng: random.Random,
    full: bool = False,
) -> Run:
    """Processes leasing from one ScriptModel for ``duration`` true seconds.

    ``arrivals[p]`` are the true times requests reach process ``p``; a request waits in
    its process's line (first come, first served; gone after ``plan.horizon``) until a
    lease token is usable. ``round_trip()`` gives each call's (to Redis, back) seconds.
    ``full``: the fleet's bucket starts full (long idle), else Redis has never seen it."""
    server = ScriptModel()
    if full:
        server.hashes["lim"] = Bucket(0.0, plan.tolerance_us, plan.fingerprint)
    server_offset = rng.uniform(1e4, 1e6)  # Redis's clock shares nothing with ours
    procs = [
        Process(book=LeaseBook(plan, offset), offset=offset, arrivals=list(a))
        for a, offset in ((a, rng.uniform(0, 1e5)) for a in arrivals)
    ]
    events: list[tuple[float, int, str, int, tuple[float, ...]]] = []
    seq = 0
    spends: list[float] = []
    per = [0] * len(procs)
    calls = 0

    def push(t: float, kind: str, i: int, data: tuple[float, ...] = ()) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, i, data))

    def serve(i: int, t: float) -> None:
        nonlocal calls
        p = procs[i]
        now = t + p.offset
        while p.line and t - p.line[0] > plan.horizon:
            p.line.popleft()  # waited max_wait: refused (429)
        while p.line and p.book.take(now):
            p.line.popleft()
            spends.append(t)
            per[i] += 1
        if not p.asking:
            want = p.book.want(now, len(p.line))
            if want:
                p.asking = True
                calls += 1
                there, back = round_trip()
                push(t + there, "server", i, (now, float(want), back))
        changes = p.book.next_change(now, len(p.line))
        nxt = math.inf if changes is None else changes - p.offset
        opens = p.book.next_open(now)
        if opens is not None:
            nxt = min(nxt, opens - p.offset)
        if p.line:
            nxt = min(nxt, p.line[0] + plan.horizon)
        if nxt == math.inf:
            return
        if nxt < p.wake or p.wake <= t:
            p.wake = max(nxt, t + 1e-6)
            push(p.wake, "tick", i)

    for i, p in enumerate(procs):
        for a in p.arrivals:
            push(a, "arrive", i)
    while events:
        t, _, kind, i, data = heapq.heappop(events)
        if t > duration:
            break
        p = procs[i]
        if kind == "arrive":
            p.line.append(t)
        elif kind == "server":
            sent, want, back = data
            now_us = math.floor((t + server_offset) * 1e6)
            reply = server.call("lim", now_us, plan.args(int(want), False))
            push(t + back, "reply", i, (sent, want, *map(float, reply)))
        elif kind == "reply":
            sent, want, n, delay, retry = data
            p.book.granted_at(sent, t + p.offset, int(want), (int(n), int(delay), int(retry)))
            p.asking = False
        serve(i, t)
    return Run(spends, per, calls, sum(p.book.expired for p in procs))


def worst_excess(spends: list[float], burst: float, rate: float) -> float:
    """The most that any window [t_i, t_j] of the spends holds above ``burst + rate*t``
    (<= 0 when the bound holds everywhere): max over j of (j - rate*t_j) - min over i <= j
    of (i - rate*t_i) + 1 - burst."""
    worst = -math.inf
    lowest = math.inf
    for j, t in enumerate(sorted(spends)):
        lowest = min(lowest, j - rate * t)
        worst = max(worst, (j - rate * t) - lowest + 1 - burst)
    return worst


def greedy(
    plan: LeasePlan,
    processes: int,
    round_trip: Callable[[], tuple[float, float]],
    spend: Callable[[float, float], float],
    duration: float,
    rng: random.Random,
    full: bool = False,
) -> list[float]:
    """Processes that ask again as soon as each reply arrives (random sizes up to a
    slice) and spend every granted token wherever ``spend(usable_from, usable_until)``
    puts it (true times): any use of the leases the rules allow, the worst included."""
    server = ScriptModel()
    if full:
        server.hashes["lim"] = Bucket(0.0, plan.tolerance_us, plan.fingerprint)
    server_offset = rng.uniform(1e4, 1e6)
    offsets = [rng.uniform(0, 1e5) for _ in range(processes)]
    calls = [(rng.uniform(0, 0.01), i) for i in range(processes)]  # (true send time, who)
    heapq.heapify(calls)
    spends: list[float] = []
    while calls:
        sent, i = heapq.heappop(calls)
        if sent > duration:
            continue
        there, back = round_trip()
        want = rng.randint(1, plan.slice_max)
        now_us = math.floor((sent + there + server_offset) * 1e6)
        reply = server.call("lim", now_us, plan.args(want, False))
        received = sent + there + back
        book = LeaseBook(plan, sent + offsets[i])
        book.granted_at(sent + offsets[i], received + offsets[i], want, reply)
        for tokens, usable_from, usable_until in book.held():
            spends += [
                spend(usable_from - offsets[i], usable_until - offsets[i]) for _ in range(tokens)
            ]
        heapq.heappush(calls, (received + (0.0 if reply[0] else reply[2] / 1e6), i))
    return spends
