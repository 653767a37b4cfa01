"""TokenManager rules, driven by a scripted token scheme and a hand-moved clock (no sleeps).

End-to-end behaviour against the vendor sandbox over real sockets is in test_credentials.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from structlog.testing import capture_logs

from proxy import config
from proxy.auth import Grant, TokenEndpointError, TokenManager
from proxy.clock import MONOTONIC
from proxy.errors import TokenUnavailableError
from proxy.state.tokens import (
    LocalTokenStore,
    LockOutcome,
    Token,
)

from .fakeclock import Clock
from .tokenstores import RecordingStore

Outcome = Grant | TokenEndpointError


@dataclass
class ScriptedScheme:
    """Answers fetches from a script; records which refresh token each fetch presented."""

    script: Sequence[Outcome] = ()
    presented: list[str | None] = field(default_factory=list)
    gate: asyncio.Event | None = None
    counter: int = 0
    clock: Clock | None = None
    takes: float = 0.0  # seconds each fetch "takes" on the clock
    queue: list[Outcome] = field(init=False)

    def __post_init__(self) -> None:
        self.queue = list(self.script)

    async def fetch(self, refresh_token: str | None) -> Grant:
        self.presented.append(refresh_token)
        if self.gate is not None:
            await self.gate.wait()
        if self.clock is not None:
            self.clock.now += self.takes
        if self.queue:
            outcome = self.queue.pop(0)
        else:
            self.counter += 1
            outcome = Grant(f"auto-{self.counter}", 300.0)
        if isinstance(outcome, TokenEndpointError):
            raise outcome
        return outcome


def auth_table(extra: str = "") -> config.AuthConfig:
    cfg = config.loads(
        '[[routes]]\nprefix = "/a"\nupstream = "http://h"\nauth = "t"\n'
        '[auth.t]\ntype = "password"\ntoken_url = "http://idp/token"\nclient_id = "c"\n'
        f'username = "u"\npassword = "p"\n{extra}',
        {},
    )
    return cfg.auth["t"]


def manager(scheme: ScriptedScheme, clock: Clock, extra: str = "") -> TokenManager:
    auth = auth_table(extra)
    store = LocalTokenStore(auth.token_rate, clock=clock)
    return TokenManager(auth, scheme, store=store, jitter=lambda: 1.0)


def recorded(
    scheme: ScriptedScheme,
    clock: Clock | None = None,
    *,
    jitter: float = 1.0,
    max_wait: float | None = None,
) -> tuple[TokenManager, RecordingStore]:
    """A manager over a RecordingStore (on ``clock``, else the real monotonic clock)."""
    store = RecordingStore(LocalTokenStore(clock=MONOTONIC if clock is None else clock))
    tokens = TokenManager(
        auth_table(), scheme, store=store, jitter=lambda: jitter, max_wait=max_wait
    )
    return tokens, store


def transient(reason: str = "http_503", retry_after: float | None = None) -> TokenEndpointError:
    return TokenEndpointError(reason, rejected=False, status=503, retry_after=retry_after)


async def test_cold_burst_causes_one_fetch() -> None:
    """200 concurrent requests on an empty cache share a single token request."""
    gate = asyncio.Event()
    scheme = ScriptedScheme([Grant("only", 300.0)], gate=gate)
    tokens = manager(scheme, Clock())
    waiters = [asyncio.create_task(tokens.token()) for _ in range(200)]
    await asyncio.sleep(0)
    gate.set()
    assert set(await asyncio.gather(*waiters)) == {"only"}
    assert len(scheme.presented) == 1


async def test_failed_fetch_wakes_every_waiter_then_fails_fast() -> None:
    """One failure reaches all waiters; until the backoff ends, no new request is sent."""
    gate = asyncio.Event()
    clock = Clock()
    scheme = ScriptedScheme([transient()], gate=gate)
    tokens = manager(scheme, clock)
    waiters = [asyncio.create_task(tokens.token()) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, TokenUnavailableError) for r in results)
    assert len(scheme.presented) == 1
    with pytest.raises(TokenUnavailableError) as info:
        await tokens.token()
    assert info.value.reason == "http_503"
    assert info.value.retry_after == pytest.approx(0.5)
    assert len(scheme.presented) == 1
    clock.now += 0.6
    assert await tokens.token() == "auto-1"
    assert len(scheme.presented) == 2


async def test_token_is_never_used_in_its_last_tenth() -> None:
    """A 300 s token is served until 270 s; after that a new one is fetched first."""
    clock = Clock()
    scheme = ScriptedScheme([Grant("first", 300.0), Grant("second", 300.0)])
    tokens = manager(scheme, clock)
    assert await tokens.token() == "first"
    clock.now += 269.9
    assert await tokens.token() == "first"
    clock.now += 0.2
    assert await tokens.token() == "second"


async def test_expired_token_is_not_served_during_an_outage() -> None:
    """While the issuer is down a valid token keeps serving; past its margin, never."""
    clock = Clock()
    scheme = ScriptedScheme([Grant("old", 10.0)] + [transient()] * 50)
    tokens = manager(scheme, clock)
    assert await tokens.token() == "old"
    clock.now += 8.5  # past refresh point, before the margin
    assert await tokens.token() == "old"
    clock.now += 0.6  # inside the last second
    with pytest.raises(TokenUnavailableError):
        await tokens.token()
    assert not tokens.ready


async def test_transient_backoff_grows_to_its_cap_and_honours_retry_after() -> None:
    """Delays double from `backoff` to `max_backoff`; a longer Retry-After wins."""
    clock = Clock()
    scheme = ScriptedScheme([*[transient()] * 6, transient("http_429", retry_after=42.0)])
    tokens = manager(scheme, clock, "fetch_retry = { backoff = 1, max_backoff = 8 }\n")
    delays = []
    for _ in range(7):
        with pytest.raises(TokenUnavailableError) as info:
            await tokens.token()
        assert info.value.retry_after is not None
        delays.append(info.value.retry_after)
        clock.now += info.value.retry_after
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 42.0]


async def test_rejected_credentials_open_a_long_breaker() -> None:
    """invalid_client is asked again only after rejected_backoff, doubling up to 16x."""
    clock = Clock()
    bad = TokenEndpointError("invalid_client", rejected=True, status=401)
    scheme = ScriptedScheme([bad] * 7)
    tokens = manager(scheme, clock, "fetch_retry = { rejected_backoff = 60 }\n")
    delays = []
    for _ in range(6):
        with pytest.raises(TokenUnavailableError) as info:
            await tokens.token()
        assert info.value.reason == "invalid_client"
        assert info.value.retry_after is not None
        delays.append(info.value.retry_after)
        for _ in range(5):  # requests in the meantime send nothing
            with pytest.raises(TokenUnavailableError):
                await tokens.token()
        clock.now += info.value.retry_after
    assert delays == [60.0, 120.0, 240.0, 480.0, 960.0, 960.0]
    assert len(scheme.presented) == 6
    assert tokens.status()["last_outcome"] == "invalid_client"


async def test_refresh_tokens_rotate_and_are_presented_once() -> None:
    """Each renewal presents the newest refresh token, and each refresh token only once."""
    clock = Clock()
    scheme = ScriptedScheme(
        [
            Grant("a1", 300.0, "r1", 1800.0, "password"),
            Grant("a2", 300.0, "r2", 1800.0, "refresh_token"),
            Grant("a3", 300.0, "r3", 1800.0, "refresh_token"),
        ]
    )
    tokens = manager(scheme, clock)
    for expected in ("a1", "a2", "a3"):
        assert await tokens.token() == expected
        clock.now += 280
    assert scheme.presented == [None, "r1", "r2"]


async def test_refused_refresh_token_falls_back_to_the_password_grant() -> None:
    """invalid_grant on the refresh grant is followed, in the same fetch, by the password grant."""
    clock = Clock()
    refused = TokenEndpointError("invalid_grant", rejected=True, status=400)
    scheme = ScriptedScheme(
        [Grant("a1", 300.0, "r1", 1800.0), refused, Grant("a2", 300.0, "r2", 1800.0)]
    )
    tokens = manager(scheme, clock)
    assert await tokens.token() == "a1"
    clock.now += 280
    assert await tokens.token() == "a2"
    assert scheme.presented == [None, "r1", None]


async def test_expired_refresh_token_is_not_presented() -> None:
    """Past refresh_expires_in, the primary grant is used directly."""
    clock = Clock()
    scheme = ScriptedScheme([Grant("a1", 300.0, "r1", 200.0), Grant("a2", 300.0)])
    tokens = manager(scheme, clock)
    await tokens.token()
    clock.now += 280
    assert await tokens.token() == "a2"
    assert scheme.presented == [None, None]


async def test_burst_of_401s_for_one_token_causes_one_fetch() -> None:
    """Many requests reporting the same refused token lead to a single new token."""
    clock = Clock()
    scheme = ScriptedScheme([Grant("bad", 300.0), Grant("good", 300.0)])
    tokens = manager(scheme, clock)
    refused = await tokens.token()
    clock.now += 5
    for _ in range(50):
        tokens.invalidate(refused)
    results = await asyncio.gather(*(tokens.token() for _ in range(50)))
    assert set(results) == {"good"}
    assert len(scheme.presented) == 2
    tokens.invalidate(refused)  # a late report about the old token changes nothing
    assert await tokens.token() == "good"
    assert len(scheme.presented) == 2


async def test_token_rate_is_never_exceeded() -> None:
    """With token_rate 2 per 60 s a third request within the minute is not sent."""
    clock = Clock()
    scheme = ScriptedScheme([Grant("a", 2.0), Grant("b", 2.0), Grant("c", 2.0)])
    tokens = manager(scheme, clock, "token_rate = { rate = 2, per = 60 }\n")
    assert await tokens.token() == "a"
    clock.now += 5
    assert await tokens.token() == "b"
    clock.now += 5
    with pytest.raises(TokenUnavailableError) as info:
        await tokens.token()
    assert info.value.reason == "token_rate"
    assert info.value.retry_after == pytest.approx(50.0)
    assert len(scheme.presented) == 2
    clock.now += 50
    assert await tokens.token() == "c"


async def test_status_never_holds_the_token() -> None:
    """status() reports expiry and outcome, not the token or refresh token."""
    clock = Clock()
    scheme = ScriptedScheme([Grant("secret-access", 300.0, "secret-refresh", 1800.0)])
    tokens = manager(scheme, clock)
    await tokens.token()
    status = tokens.status()
    assert status["ready"] is True
    assert status["expires_in_s"] == 300.0
    assert status["last_outcome"] == "ok"
    assert "secret" not in repr(status)


async def test_a_token_outlived_by_its_fetch_is_not_handed_out() -> None:
    """A 2 s token whose request took 1.9 s is past its margin: it is refused, not used."""
    clock = Clock()
    scheme = ScriptedScheme([Grant("slow", 2.0)], clock=clock, takes=1.9)
    tokens = manager(scheme, clock)
    with pytest.raises(TokenUnavailableError) as info:
        await tokens.token()
    assert info.value.reason == "expired_on_arrival"
    assert not tokens.ready


@pytest.mark.parametrize("lifetime", [float("nan"), float("inf"), 0.5])
async def test_unusable_lifetimes_are_failures(lifetime: float) -> None:
    """NaN, infinite or sub-second lifetimes are failures with backoff, never installed."""
    clock = Clock()
    tokens = manager(ScriptedScheme([Grant("odd", lifetime)]), clock)
    with pytest.raises(TokenUnavailableError) as info:
        await tokens.token()
    assert info.value.reason == "expired_on_arrival"
    assert info.value.retry_after is not None
    assert info.value.retry_after > 0


async def test_a_crashing_scheme_is_a_transient_failure() -> None:
    """An unexpected exception backs off like any failure and does not escape as a crash."""

    class Crashing(ScriptedScheme):
        async def fetch(self, refresh: str | None) -> Grant:
            self.presented.append(refresh)
            raise RecursionError("deeply nested JSON")

    clock = Clock()
    scheme = Crashing()
    tokens = manager(scheme, clock)
    for _ in range(3):
        with pytest.raises(TokenUnavailableError) as info:
            await tokens.token()
    assert info.value.reason == "internal_error"
    assert len(scheme.presented) == 1


async def test_refresh_token_kept_when_the_issuer_does_not_rotate() -> None:
    """An answer to the refresh grant without a new refresh token keeps the old one."""
    clock = Clock()
    scheme = ScriptedScheme(
        [Grant("a1", 300.0, "r1", 1800.0), Grant("a2", 300.0), Grant("a3", 300.0)]
    )
    tokens = manager(scheme, clock)
    for _ in range(3):
        await tokens.token()
        clock.now += 280
    assert scheme.presented == [None, "r1", "r1"]


async def test_refresh_token_is_not_presented_again_after_it_was_sent() -> None:
    """A refresh request that failed after sending (it may have rotated) is not repeated."""
    clock = Clock()
    scheme = ScriptedScheme([Grant("a1", 300.0, "r1", 1800.0), transient("timeout")])
    tokens = manager(scheme, clock)
    await tokens.token()
    clock.now += 280
    with pytest.raises(TokenUnavailableError):
        await tokens.token()
    clock.now += 1
    await tokens.token()
    assert scheme.presented == [None, "r1", None]


async def test_issuer_retry_after_is_capped() -> None:
    """A Retry-After of a year is obeyed for 15 minutes at most."""
    clock = Clock()
    tokens = manager(ScriptedScheme([transient("http_429", retry_after=31_536_000.0)]), clock)
    with pytest.raises(TokenUnavailableError) as info:
        await tokens.token()
    assert info.value.retry_after == pytest.approx(900.0)


async def settle() -> None:
    """Let the background task run until it waits for its timer (fake clock: no time passes)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_invalidation_renews_in_the_background() -> None:
    """After a refused token, a new one is fetched without waiting for a request."""
    clock = Clock()
    scheme = ScriptedScheme([Grant("first", 300.0), Grant("second", 300.0)])
    tokens = manager(scheme, clock)
    tokens.start()
    try:
        await settle()
        assert tokens.ready
        assert scheme.presented == [None]
        clock.now += 5
        tokens.invalidate("first")
        assert tokens.status()["ready"] is False
        await settle()
        assert tokens.ready
        assert len(scheme.presented) == 2
        assert await tokens.token() == "second"
    finally:
        await tokens.close()


async def test_a_token_expired_on_arrival_ends_its_lock_with_one_failure() -> None:
    """A fetch that outlasts its token fails instead of committing it: its lock ends with
    fail() alone, the failure is recorded (counted afresh, as the issuer accepted us), the
    rotated refresh token is kept, and the same log lines and status as ever follow."""
    clock = Clock()
    scheme = ScriptedScheme(
        [
            Grant("a1", 300.0, "r1", 1800.0),
            transient(),
            Grant("slow", 2.0, "r2", 1800.0, "refresh_token"),
        ],
        clock=clock,
    )
    tokens, store = recorded(scheme, clock)
    assert await tokens.token() == "a1"
    clock.now += 280
    with pytest.raises(TokenUnavailableError):
        await tokens.token()  # one transient failure first: the counts must start over
    clock.now += 1.0
    scheme.takes = 1.9
    with capture_logs() as logs, pytest.raises(TokenUnavailableError) as info:
        await tokens.token()
    assert info.value.reason == "expired_on_arrival"
    assert info.value.retry_after == pytest.approx(0.5)  # the first step of the backoff
    assert store.locks() == [["commit"], ["fail:http_503"], ["fail:expired_on_arrival"]]
    record = store.read()
    assert (record.generation, record.failures, record.last_outcome) == (
        1,
        1,
        "expired_on_arrival",
    )
    assert record.refresh is not None
    assert record.refresh.value == "r2"
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("token_fetch_started", "info"),
        ("token_fetched", "info"),
        ("token_fetch_failed", "warning"),
    ]
    assert logs.pop(0) == {
        "event": "token_fetch_started",
        "log_level": "info",
        "auth": "t",
        "grant": "password",
        "endpoint": "idp:80",
    }
    assert logs[0] == {
        "event": "token_fetched",
        "log_level": "info",
        "auth": "t",
        "grant": "refresh_token",
        "lifetime_s": 2.0,
        "duration_ms": 1900.0,
    }
    assert logs[1] == {
        "event": "token_fetch_failed",
        "log_level": "warning",
        "auth": "t",
        "reason": "expired_on_arrival",
        "status": None,
        "description": "fetch outlasted the token",
        "endpoint": "idp:80",
        "rejected": False,
        "retry_in_s": 0.5,
        "has_token": False,
    }
    status = tokens.status()
    assert (status["ready"], status["expires_in_s"], status["consecutive_failures"]) == (
        False,
        None,
        1,
    )
    assert status["last_outcome"] == "expired_on_arrival"
    scheme.takes = 0.0
    clock.now += 0.5
    assert await tokens.token() == "auto-1"
    assert scheme.presented == [None, "r1", None, "r2"]


def usable(value: str) -> Token:
    """A token on the real monotonic clock, due for renewal and usable for minutes."""
    now = MONOTONIC.monotonic()
    return Token(value, now - 250, now + 50, now - 10, now + 20)


async def test_the_background_task_polls_a_lock_held_elsewhere() -> None:
    """While another process holds the lock, the renewal asks for it again after a
    100-250 ms poll, not in a loop, and requests keep the still-usable token."""
    scheme = ScriptedScheme()
    tokens, store = recorded(scheme, jitter=0.0)  # the shortest poll: 100 ms
    await store.inner.lock(0)
    await store.inner.commit(usable("current"), None, 0)
    store.held = [30.0] * 100_000
    tokens.start()
    try:
        await asyncio.sleep(0.35)
        assert await tokens.token() == "current"
    finally:
        await tokens.close()
    asked = store.calls.count("lock:held")
    assert 1 <= asked <= 5  # at most one a poll: 10 a second at most, never thousands
    assert scheme.presented == []


async def test_a_poll_never_outlasts_the_holders_lock() -> None:
    """A holder whose lock ends in 20 ms is asked again then, not after the full poll."""
    scheme = ScriptedScheme()
    tokens, store = recorded(scheme)  # a 250 ms poll
    await store.inner.lock(0)
    await store.inner.commit(usable("current"), None, 0)
    store.held = [0.02]
    tokens.start()
    try:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if scheme.presented:
                break
    finally:
        await tokens.close()
    assert scheme.presented == [None]  # the lock was free after 20 ms: this process fetched
    assert store.calls == ["lock:held", "lock:acquired", "commit"]


@pytest.mark.parametrize("outcome", ["commit", "fail"])
async def test_a_request_without_a_token_waits_for_the_holders_outcome(outcome: str) -> None:
    """A request with no usable token waits while another process fetches, then takes
    its token, or fails fast with its failure; it never fetches itself meanwhile."""
    clock = Clock()
    scheme = ScriptedScheme()
    tokens, store = recorded(scheme, clock)
    store.held = [0.01] * 1000
    request = asyncio.create_task(tokens.token())
    await asyncio.sleep(0.03)
    assert not request.done()
    await store.inner.lock(0)  # the other process's outcome
    if outcome == "commit":
        await store.inner.commit(Token("theirs", 1000.0, 1300.0, 1240.0, 1270.0), None, 0)
        store.held.clear()
        assert await request == "theirs"
    else:
        await store.inner.fail("http_503", rejected=False, delay=2.0, spent=None)
        with pytest.raises(TokenUnavailableError) as info:
            await request
        assert (info.value.reason, info.value.retry_after) == ("http_503", 2.0)
    assert scheme.presented == []
    await tokens.close()


async def test_a_request_waits_for_a_holder_no_longer_than_max_wait() -> None:
    """As for a fetch of its own, a request gives up after max_wait: 503, token_endpoint_slow."""
    scheme = ScriptedScheme()
    tokens, store = recorded(scheme, Clock(), max_wait=0.05)
    store.held = [0.01] * 1000
    with pytest.raises(TokenUnavailableError) as info:
        await tokens.token()
    assert info.value.reason == "token_endpoint_slow"
    await tokens.close()
    assert scheme.presented == []


async def test_a_cancelled_fetch_releases_with_the_presented_refresh_token_spent() -> None:
    """A fetch cancelled after presenting a refresh token ends its lock with release()
    alone, and that refresh token, possibly consumed, is never presented again."""
    clock = Clock()
    scheme = ScriptedScheme([Grant("a1", 300.0, "r1", 1800.0)])
    tokens, store = recorded(scheme, clock)
    await tokens.token()
    scheme.gate = asyncio.Event()  # the issuer never answers
    clock.now += 280
    request = asyncio.create_task(tokens.token())
    await settle()
    assert scheme.presented == [None, "r1"]
    await tokens.close()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert store.locks() == [["commit"], ["release:r1"]]
    assert store.read().refresh is None
    scheme.gate = None
    assert await tokens.token() == "auto-1"
    assert scheme.presented == [None, "r1", None]


async def test_a_fetch_cancelled_while_its_failure_is_written_still_ends_its_lock() -> None:
    """close() during fail() (a shared store's round trip) releases the lock: no other
    fetch has to wait out a lock nobody holds any more."""
    store = RecordingStore(LocalTokenStore(clock=Clock()), stall_fail=True)
    tokens = TokenManager(
        auth_table(), ScriptedScheme([transient()]), store=store, jitter=lambda: 1.0
    )
    request = asyncio.create_task(tokens.token())
    await asyncio.wait_for(store.failing.wait(), 5)
    await tokens.close()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert store.calls == ["lock:acquired", "fail:http_503", "release:None"]
    assert (await store.inner.lock(store.read().generation)).outcome is LockOutcome.ACQUIRED
