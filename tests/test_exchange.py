"""The exchange with an upstream (proxy/upstream.py) on scripted answers and a fake clock:
retries, 401 replays, route pauses, limits and the learned rate, with no socket and no
real sleep. What it records, and that every answer not passed on is released."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, TypeVar

import pytest
from multidict import CIMultiDict
from structlog.testing import capture_logs

from proxy import config as config_module
from proxy.errors import (
    ProxyError,
    RateLimitedError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from proxy.http.client import UpstreamProtocolError
from proxy.http.transport import UpstreamResponse
from proxy.limits import Limit
from proxy.state.base import MAX_PAUSE
from proxy.state.local import LocalPause
from proxy.upstream import ExchangeRecord, Outbound, Target, exchange

from .fakeclock import Clock
from .mocktransport import Answer, Handler, MockResponse, MockTransport, Sent, script

T = TypeVar("T")
THROTTLED: Answer = (429, {})


class Provider:
    """A TokenProvider whose tokens are numbered: invalidating the one in use issues the
    next."""

    name = "vendor"

    def __init__(self) -> None:
        self.current = 1
        self.invalidated: list[str] = []

    async def token(self) -> str:
        return f"token-{self.current}"

    def invalidate(self, rejected: str) -> None:
        self.invalidated.append(rejected)
        if rejected == f"token-{self.current}":
            self.current += 1

    @property
    def ready(self) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        return {}

    def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class FakeLimit:
    """A Limit that records the deadline of each call and, as scripted, waits on the
    clock or refuses from its ``refuse_from``-th call on."""

    def __init__(
        self,
        clock: Clock,
        name: str = "route /api",
        *,
        max_wait: float = 5.0,
        waits: float = 0.0,
        refuse_from: int | None = None,
    ) -> None:
        self.name = name
        self.rate = 100.0
        self.max_wait = max_wait
        self._clock = clock
        self._waits = waits
        self._refuse_from = refuse_from
        self.deadlines: list[float | None] = []

    async def acquire(self, deadline: float | None = None) -> float:
        self.deadlines.append(deadline)
        if self._refuse_from is not None and len(self.deadlines) >= self._refuse_from:
            raise RateLimitedError(self.name, 1.0)
        if self._waits:
            await self._clock.sleep(self._waits)
        return self._waits

    def status(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        return None


class Rig:
    """One route's Target over a scripted transport and a fake clock."""

    def __init__(
        self,
        handler: Handler,
        config: str = "",
        *,
        limits: tuple[Limit, ...] = (),
        provider: Provider | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self.start = self.clock.now
        self.transport = MockTransport(handler, self.clock)
        toml = f'[[routes]]\nprefix = "/api"\nupstream = "http://127.0.0.1:9"\n{config}\n'
        route = config_module.loads(toml, {}).routes[0]
        pause = LocalPause(route.prefix, self.clock)
        self.target = Target(route, self.transport, provider, limits, pause=pause, clock=self.clock)

    def outbound(
        self,
        *,
        replayable: bool = True,
        provider: Provider | None = None,
        limits: tuple[Limit, ...] = (),
    ) -> Outbound:
        return Outbound(
            "GET", "/x", CIMultiDict(), None, None, replayable, provider=provider, limits=limits
        )

    async def exchange(
        self, outbound: Outbound | None = None, record: ExchangeRecord | None = None
    ) -> UpstreamResponse:
        return await exchange(self.target, outbound or self.outbound(), record or ExchangeRecord())

    async def one(
        self, outbound: Outbound | None = None
    ) -> tuple[UpstreamResponse, ExchangeRecord]:
        """Run one exchange to its end on the fake clock."""
        record = ExchangeRecord()
        answer = await settle(self.clock, self.exchange(outbound, record))
        return answer, record

    def gaps(self) -> list[float]:
        times = self.transport.times()
        return [round(b - a, 6) for a, b in itertools.pairwise(times)]

    def only_held(self, *answers: UpstreamResponse) -> None:
        """Every answer but those passed on was released."""
        assert self.transport.unreleased() == list(answers)


async def settle(clock: Clock, work: Awaitable[T]) -> T:
    """Await ``work`` on the fake clock (time jumps whenever everything waits)."""
    done: list[T] = []

    async def keep() -> None:
        done.append(await work)

    async with asyncio.timeout(5):  # a task waiting on anything but the clock would spin
        await clock.run(keep())
    return done[0]


@dataclass(frozen=True)
class Throttling:
    """A throttling case: the route's config, the answers, what the exchange must do."""

    id: str
    config: str
    answers: tuple[Answer, ...]
    then: Answer = (200, {})
    status: int = 200
    attempts: int = 2
    retry_after: float | None = None  # what the record tells forward to add
    first_gap: float | None = None  # seconds between the first two attempts
    paused_after: float = 0.0  # the route's pause still to run when the exchange ends
    replayable: bool = True
    retrying_elsewhere: int = 0  # retries other requests have in flight


THROTTLING = [
    Throttling("retry-after-seconds", "", ((429, {"Retry-After": "3"}),), first_gap=3.0),
    Throttling(
        "backoff-without-hint",
        "retry = { backoff = 0.2, max_backoff = 0.2 }",
        (THROTTLED,),
        first_gap=0.2,
    ),
    Throttling(
        "attempts-cap",
        "retry = { attempts = 3, backoff = 0.05, max_backoff = 0.05 }",
        (),
        then=THROTTLED,
        status=429,
        attempts=3,
        retry_after=0.05,
        first_gap=0.05,
    ),
    Throttling(
        "max-wait-cuts-a-hinted-wait",
        "retry = { max_wait = 2 }",
        ((429, {"Retry-After": "10"}),),
        status=429,
        attempts=1,
        paused_after=10.0,
    ),
    Throttling(
        "max-wait-cuts-a-backoff",
        "retry = { max_wait = 2, backoff = 5 }",
        (THROTTLED,),
        status=429,
        attempts=1,
        retry_after=5.0,
    ),
    Throttling(
        "body-not-replayable",
        "",
        ((429, {"Retry-After": "0"}),),
        status=429,
        attempts=1,
        replayable=False,
    ),
    Throttling(
        "budget-refuses",
        "retry = { backoff = 0.1 }",
        (THROTTLED,),
        status=429,
        attempts=1,
        retry_after=0.1,
        retrying_elsewhere=3,
    ),
    Throttling(
        "budget-floor-allows",
        "retry = { backoff = 0.1, max_backoff = 0.1 }",
        (THROTTLED,),
        first_gap=0.1,
        retrying_elsewhere=2,
    ),
    Throttling(
        "503-with-retry-after-configured",
        "retry = { on = [429, 503] }",
        ((503, {"Retry-After": "1"}),),
        first_gap=1.0,
    ),
    Throttling(
        "503-without-retry-after",
        "retry = { on = [429, 503] }",
        ((503, {}),),
        status=503,
        attempts=1,
    ),
    Throttling("503-not-configured", "", ((503, {"Retry-After": "1"}),), status=503, attempts=1),
]


@pytest.mark.parametrize("case", THROTTLING, ids=[case.id for case in THROTTLING])
async def test_throttling_answers_are_retried_or_passed_on(case: Throttling) -> None:
    """A 429 (or a 503 with Retry-After, where configured) is retried after the wait the
    upstream asks for or a backoff, within attempts, max_wait and the retry budget;
    otherwise it is the answer, with the wait to tell the client when it gave none."""
    rig = Rig(script(*case.answers, then=case.then), case.config)
    rig.target.budget.retrying = case.retrying_elsewhere
    answer, record = await rig.one(rig.outbound(replayable=case.replayable))
    assert (answer.status, record.status) == (case.status, case.status)
    assert (record.attempts, record.retries) == (case.attempts, case.attempts - 1)
    assert record.retry_after == case.retry_after
    assert len(rig.transport.sent) == case.attempts
    if case.first_gap is not None:
        assert rig.gaps()[0] == pytest.approx(case.first_gap)
    assert rig.target.route_pause.remaining() == pytest.approx(case.paused_after)
    assert (rig.target.budget.active, rig.target.budget.retrying) == (0, case.retrying_elsewhere)
    rig.only_held(answer)


async def test_retry_after_as_an_http_date_is_waited_out() -> None:
    """A Retry-After that is a date is waited out until then (one-second resolution)."""
    hint = formatdate(time.time() + 5, usegmt=True)
    rig = Rig(script((429, {"Retry-After": hint})))
    answer, record = await rig.one()
    assert (answer.status, record.attempts) == (200, 2)
    assert 4.0 <= rig.gaps()[0] <= 5.0


@pytest.mark.parametrize(
    ("answers", "replayable", "with_provider", "status", "renewals", "invalidated", "sent"),
    [
        ([(401, {})], True, True, 200, 1, ["token-1"], ["Bearer token-1", "Bearer token-2"]),
        (
            [(401, {}), (401, {})],
            True,
            True,
            401,
            1,
            ["token-1"],
            ["Bearer token-1", "Bearer token-2"],
        ),
        ([(401, {})], False, True, 401, 0, ["token-1"], ["Bearer token-1"]),
        ([(401, {})], True, False, 401, 0, [], [None]),
    ],
    ids=["renewed-and-replayed", "second-401-is-the-answer", "body-not-replayable", "no-auth"],
)
async def test_a_401_renews_the_token_and_replays_once(
    answers: list[Answer],
    replayable: bool,
    with_provider: bool,
    status: int,
    renewals: int,
    invalidated: list[str],
    sent: list[str | None],
) -> None:
    """A refused token is invalidated and the request replayed once with a new one, if its
    body can be sent again; a second 401, or a route without auth, passes the 401 on."""
    provider = Provider() if with_provider else None
    rig = Rig(script(*answers))
    answer, record = await rig.one(rig.outbound(replayable=replayable, provider=provider))
    assert (answer.status, record.token_renewals, record.retries) == (status, renewals, 0)
    assert record.attempts == len(sent)
    assert [s.headers.get("Authorization") for s in rig.transport.sent] == sent
    assert (provider.invalidated if provider is not None else []) == invalidated
    rig.only_held(answer)


async def test_a_hinted_429_pauses_the_route_and_others_wait_it_out() -> None:
    """After a 429 with Retry-After no request on the route goes upstream before the
    pause ends, and each counts the time it was held."""
    rig = Rig(script((429, {"Retry-After": "2"})))
    records = {name: ExchangeRecord() for name in ("first", "second")}

    async def second() -> None:
        await rig.clock.sleep(0.5)
        assert rig.target.route_pause.remaining() == pytest.approx(1.5)
        await rig.exchange(record=records["second"])

    async def first() -> None:
        await rig.exchange(record=records["first"])

    await settle(rig.clock, asyncio.gather(first(), second()))
    first_sent, *later = rig.transport.times()
    assert all(at >= first_sent + 2.0 for at in later)
    assert records["first"].paused == pytest.approx(2.0)
    assert records["second"].paused == pytest.approx(1.5)
    assert records["second"].limiter_wait >= records["second"].paused
    assert rig.target.route_pause.status()["paused_total_s"] == pytest.approx(2.0)


@pytest.mark.parametrize(("pause", "refused"), [(20.0, True), (4.0, False)])
async def test_a_pause_longer_than_max_wait_is_refused_at_once(pause: float, refused: bool) -> None:
    """A request that cannot wait out the route's pause within max_wait gets
    RateLimitedError at once, nothing sent; a shorter pause is waited out."""
    rig = Rig(script(), "retry = { max_wait = 5 }")
    rig.target.route_pause.pause(pause, "test")
    record = ExchangeRecord()
    if refused:
        with pytest.raises(RateLimitedError) as error:
            await settle(rig.clock, rig.exchange(record=record))
        assert error.value.retry_after == pytest.approx(pause)
        assert (rig.clock.now, rig.transport.sent, record.attempts) == (rig.start, [], 0)
    else:
        await settle(rig.clock, rig.exchange(record=record))
        assert rig.transport.times() == [pytest.approx(rig.start + pause)]


async def test_an_absurd_retry_after_pauses_the_route_for_max_pause() -> None:
    """A Retry-After of a year is passed on as it is, and pauses the route MAX_PAUSE."""
    rig = Rig(script((429, {"Retry-After": "31536000"})))
    answer, record = await rig.one()
    assert (answer.status, record.attempts, record.retry_after) == (429, 1, None)
    assert rig.target.route_pause.remaining() == MAX_PAUSE


@pytest.mark.parametrize(
    "headers",
    [
        {"RateLimit-Remaining": "0", "RateLimit-Reset": "7"},
        {"RateLimit": "limit=10, remaining=0, reset=7"},
        {"RateLimit": '"default";r=0;t=7', "RateLimit-Policy": '"default";q=10;w=7'},
    ],
    ids=["separate-fields", "draft-06", "structured"],
)
async def test_ratelimit_headers_saying_nothing_is_left_pause_the_route(
    headers: dict[str, str],
) -> None:
    """An answer whose RateLimit headers say the quota is spent is passed on, and the next
    request waits until the quota resets."""
    rig = Rig(script((200, headers)))
    answer, record = await rig.one()
    assert (answer.status, record.attempts) == (200, 1)
    assert rig.target.route_pause.remaining() == 7.0
    rig.only_held(answer)
    await rig.one()
    assert rig.gaps() == [7.0]


@pytest.mark.parametrize(
    ("waits", "retry", "deadline"),
    [((5.0, 2.0), 30.0, 2.0), ((5.0, 2.0), 1.0, 1.0), ((3.0,), 30.0, 3.0)],
    ids=["smallest-limit", "retry-max-wait-smaller", "one-limit"],
)
async def test_one_deadline_for_all_limits(
    waits: tuple[float, ...], retry: float, deadline: float
) -> None:
    """A request passing several limits waits at most the smallest max_wait of them all
    (and of retry.max_wait), not their sum: every limit gets the same deadline."""
    clock = Clock()
    limits = tuple(FakeLimit(clock, f"limit {i}", max_wait=w) for i, w in enumerate(waits))
    rig = Rig(script(), f"retry = {{ max_wait = {retry} }}", clock=clock)
    await rig.one(rig.outbound(limits=limits))
    assert [limit.deadlines for limit in limits] == [[rig.start + deadline]] * len(limits)


async def test_a_retry_takes_slots_until_max_wait_from_arrival() -> None:
    """Every attempt takes a slot of every limit, a retry's deadline being the request's
    arrival plus retry.max_wait; the time waited for slots is recorded."""
    clock = Clock()
    limit = FakeLimit(clock, max_wait=1.0, waits=0.25)
    rig = Rig(
        script(THROTTLED), "retry = { backoff = 0.5, max_backoff = 0.5, max_wait = 9 }", clock=clock
    )
    answer, record = await rig.one(rig.outbound(limits=(limit,)))
    assert (answer.status, record.attempts) == (200, 2)
    assert limit.deadlines == [rig.start + 1.0, rig.start + 9.0]
    assert record.limiter_wait == pytest.approx(0.5)
    assert rig.gaps() == [pytest.approx(0.75)]


@pytest.mark.parametrize(
    ("answers", "refuse_from", "attempts"),
    [([], 1, 0), ([THROTTLED], 2, 1), ([(401, {})], 2, 1)],
    ids=["first-attempt", "retry-after-429", "replay-after-401"],
)
async def test_a_limit_refusing_ends_the_exchange_and_the_record_keeps_what_was_sent(
    answers: list[Answer], refuse_from: int, attempts: int
) -> None:
    """A limit's refusal raises RateLimitedError before anything more is sent (a retry or
    401 replay takes a slot like any attempt); the record still counts what was sent."""
    clock = Clock()
    limit = FakeLimit(clock, refuse_from=refuse_from)
    after = FakeLimit(clock, "auth vendor")
    rig = Rig(script(*answers), "retry = { backoff = 0.1 }", clock=clock)
    outbound = rig.outbound(provider=Provider(), limits=(limit, after))
    record = ExchangeRecord()
    with pytest.raises(RateLimitedError):
        await settle(clock, rig.exchange(outbound, record))
    assert record.attempts == len(rig.transport.sent) == attempts
    assert len(after.deadlines) == refuse_from - 1  # a limit after the refusing one is spared
    rig.only_held()


async def test_after_a_429_requests_are_paced_at_the_learned_rate() -> None:
    """Before any throttling requests go at once; after a 429 they leave one turn of the
    learned rate apart (BETA x the rate that was throttled), not together."""
    rig = Rig(script((200, {}), (200, {}), (200, {}), THROTTLED), "retry = { attempts = 1 }")
    await settle(rig.clock, asyncio.gather(*(rig.exchange() for _ in range(3))))
    assert rig.gaps() == [0.0, 0.0]
    rig.transport.sent.clear()
    answer, _ = await rig.one()
    assert answer.status == 429
    assert rig.target.adaptive.active
    learned = rig.target.adaptive.rate()
    assert learned is not None
    rig.transport.sent.clear()
    await settle(rig.clock, asyncio.gather(*(rig.exchange() for _ in range(4))))
    gaps = rig.gaps()
    assert gaps[0] == pytest.approx(1 / learned, rel=0.05)
    assert all(gap > 0.1 for gap in gaps)


async def test_retries_in_a_429_storm_are_bounded_by_the_budget() -> None:
    """When every answer is a 429, at most max(3, budget x in flight) requests retry, so
    twenty requests make far fewer than twenty times four attempts."""
    rig = Rig(
        script(then=THROTTLED),
        "retry = { attempts = 4, backoff = 0.1, max_backoff = 0.1, budget = 0.2 }",
    )
    records = [ExchangeRecord() for _ in range(20)]

    async def one(record: ExchangeRecord) -> None:
        # The learned rate may refuse a retry past max_wait: nothing more is sent then.
        with contextlib.suppress(RateLimitedError):
            await rig.exchange(record=record)

    await settle(rig.clock, asyncio.gather(*(one(record) for record in records)))
    assert sum(record.attempts for record in records) == len(rig.transport.sent)
    assert len(rig.transport.sent) <= 20 + 4 * 3
    assert (rig.target.budget.active, rig.target.budget.retrying) == (0, 0)
    assert len(rig.transport.unreleased()) == 20


async def test_the_record_tells_what_it_took() -> None:
    """Attempts, retries, time waited for slots and the upstream's time (first attempt
    sent to the final answer's head) are recorded."""

    async def slow(sent: Sent) -> MockResponse:
        await rig.clock.sleep(0.25)
        return MockResponse(429 if len(rig.transport.sent) == 1 else 200)

    clock = Clock()
    limit = FakeLimit(clock, waits=0.1)
    rig = Rig(slow, "retry = { backoff = 0.2, max_backoff = 0.2 }", clock=clock)
    answer, record = await rig.one(rig.outbound(limits=(limit,)))
    assert record == ExchangeRecord(
        attempts=2,
        limiter_wait=pytest.approx(0.2),  # type: ignore[arg-type]
        paused=0.0,
        retry_after=None,
        retries=1,
        token_renewals=0,
        upstream_seconds=pytest.approx(0.8),  # type: ignore[arg-type]
        status=200,
    )
    rig.only_held(answer)


@pytest.mark.parametrize(
    ("failure", "error", "event"),
    [
        (TimeoutError(), UpstreamTimeoutError, "upstream_timeout"),
        (ConnectionRefusedError(), UpstreamUnreachableError, "upstream_unreachable"),
        (UpstreamProtocolError("bad"), UpstreamUnreachableError, "upstream_unreachable"),
    ],
    ids=["timeout", "refused", "malformed"],
)
async def test_a_broken_upstream_is_our_error_and_the_record_keeps_the_attempts(
    failure: BaseException, error: type[ProxyError], event: str
) -> None:
    """An upstream that fails on a retry gives our 502 or 504, logged once; the record
    still counts both attempts and the 429 seen, and the 429 was released."""
    rig = Rig(script((429, {"Retry-After": "0"}), failure))
    record = ExchangeRecord()
    with capture_logs() as logs, pytest.raises(error):
        await settle(rig.clock, rig.exchange(record=record))
    assert (record.attempts, record.retries, record.status) == (2, 1, 429)
    assert [line["event"] for line in logs if line["event"] == event] == [event]
    rig.only_held()


@pytest.mark.parametrize("hint", [{"Retry-After": "1"}, {}], ids=["paused", "backoff"])
async def test_a_cancelled_exchange_sends_nothing_more(hint: dict[str, str]) -> None:
    """A request cancelled while it waits to retry (its client left) sends no further
    attempt, holds no answer and leaves the retry budget as it found it."""
    rig = Rig(script((429, hint)), "retry = { backoff = 1, max_backoff = 1 }")
    task = asyncio.ensure_future(rig.exchange())

    async def leave() -> None:
        await rig.clock.sleep(0.5)
        task.cancel()

    await settle(rig.clock, leave())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(rig.transport.sent) == 1
    assert (rig.target.budget.active, rig.target.budget.retrying) == (0, 0)
    rig.only_held()


async def test_a_retry_is_logged_with_its_wait() -> None:
    """Each retry logs upstream_throttled with the route, status, attempt and delay."""
    rig = Rig(script((429, {"Retry-After": "2"})))
    with capture_logs() as logs:
        await rig.one()
    throttled = [line for line in logs if line["event"] == "upstream_throttled"]
    assert throttled == [
        {
            "event": "upstream_throttled",
            "route": "/api",
            "status": 429,
            "attempt": 1,
            "delay_s": 2.0,
            "log_level": "info",
        }
    ]
