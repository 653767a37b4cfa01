"""One token per credential for the whole fleet (proxy/state/redis_tokens.py), against a
real redis-server: the TokenStore contract as LocalTokenStore keeps it, then several
stores, each with its own link (a separate process as far as Redis can tell), sharing one
token, one lock, one backoff and one token-request window; what Redis holds (nothing
usable); and what happens while Redis is stopped, and after it lost everything."""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
from redis import asyncio as aioredis

from proxy.auth import TokenEndpointError
from proxy.config import Secret
from proxy.errors import TokenUnavailableError
from proxy.state.redis_link import BREAKER_PROBE, GUARD
from proxy.state.sealing import Sealer
from proxy.state.tokens import (
    ACQUIRED,
    SETTLED,
    LocalTokenStore,
    LockOutcome,
    RefreshToken,
    Token,
    TokenStore,
)

from .conftest import LEAK_WATCH
from .fakeclock import Clock
from .redisserver import RedisServer
from .tokenfleet import CLIENT_SECRET, PASSWORD, TIMEOUT, Issuer, Members, auth_table

LEAK_WATCH.update({CLIENT_SECRET, PASSWORD})
WALL = 1_700_000_000.0
BOUND = TIMEOUT * GUARD  # the longest one call to Redis may take


@pytest.fixture
async def members(redis_server: RedisServer) -> AsyncIterator[Members]:
    made = Members(redis_server, auth_table())
    yield made
    await made.close()


@pytest.fixture
async def rated(redis_server: RedisServer) -> AsyncIterator[Members]:
    """Members whose credential allows 2 token requests a minute."""
    made = Members(redis_server, auth_table("token_rate = { rate = 2, per = 60 }\n"))
    yield made
    await made.close()


def token(value: str, at: float, life: float = 300.0) -> Token:
    return Token(value, at, at + life, at + life * 0.8, at + life * 0.9)


def held(store: TokenStore) -> str | None:
    """The token value ``store`` holds, if any."""
    record = store.read()
    return None if record.token is None else record.token.value


async def eventually(check: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.01)


# -- the TokenStore contract, kept by both stores ----------------------------------------


@pytest.fixture(params=["local", "redis"])
def contract(request: pytest.FixtureRequest, rated: Members) -> TokenStore:
    if request.param == "local":
        return LocalTokenStore(rated.auth.token_rate, wall=lambda: WALL)
    return rated.store(wall=lambda: WALL)


async def test_a_commit_replaces_the_generation_it_names(contract: TokenStore) -> None:
    """A commit installs the next generation and clears the failure record."""
    tokens = contract
    await tokens.fail("http_503", rejected=False, delay=0.0, spent=None)
    assert await tokens.lock(0) == ACQUIRED
    issued = token("a", tokens.now())
    record = await tokens.commit(issued, RefreshToken("r", None), 0)
    assert record is not None
    assert record == tokens.read()
    assert (record.generation, record.token, record.refresh) == (
        1,
        issued,
        RefreshToken("r", None),
    )
    assert (record.failures, record.rejections, record.retry_at) == (0, 0, 0.0)
    assert (record.last_outcome, record.last_fetch) == ("ok", WALL)


async def test_a_late_writer_never_replaces_a_newer_token(contract: TokenStore) -> None:
    """A commit naming a generation that is no longer held changes nothing."""
    tokens = contract
    assert await tokens.lock(0) == ACQUIRED
    await tokens.commit(token("newer", tokens.now()), None, 0)
    assert await tokens.lock(1) == ACQUIRED
    newest = token("newest", tokens.now())
    await tokens.commit(newest, None, 1)
    before = tokens.read()
    assert await tokens.commit(token("late", tokens.now()), RefreshToken("late-r", None), 1) is None
    assert await tokens.commit(token("later", tokens.now()), None, 0) is None
    assert tokens.read() == before
    assert (before.generation, before.token) == (2, newest)


async def test_one_lock_holder_at_a_time_and_only_for_the_current_generation(
    contract: TokenStore,
) -> None:
    """lock() refuses while held (HELD, at once) and for a generation already replaced
    (SETTLED); commit, release and fail each end the lock."""
    tokens = contract
    assert await tokens.lock(0) == ACQUIRED
    held = await tokens.lock(0)
    assert (held.outcome, held.held_for) == (LockOutcome.HELD, math.inf)  # its own fetch
    await tokens.commit(token("a", tokens.now()), None, 0)
    assert await tokens.lock(0) == SETTLED
    assert await tokens.lock(1) == ACQUIRED
    assert await tokens.lock(0) == SETTLED
    await tokens.release(spent=None)
    await tokens.release(spent=None)  # releasing twice is harmless
    assert await tokens.lock(1) == ACQUIRED
    await tokens.fail("timeout", rejected=False, delay=0.0, spent=None)
    assert await tokens.lock(1) == ACQUIRED


async def test_failures_count_back_off_and_drop_a_spent_refresh_token(
    contract: TokenStore,
) -> None:
    """fail() counts transient failures and rejections apart, backs off from now() and
    drops the refresh token only when it is the one presented; the token stays."""
    tokens = contract
    await tokens.lock(0)
    issued = token("a", tokens.now())
    await tokens.commit(issued, RefreshToken("r1", tokens.now() + 900), 0)
    await tokens.lock(1)
    record = await tokens.fail("http_503", rejected=False, delay=0.0, spent="other")
    assert (record.failures, record.rejections, record.last_outcome) == (1, 0, "http_503")
    assert record.refresh is not None
    assert record.refresh.value == "r1"
    await tokens.lock(1)
    record = await tokens.fail("invalid_client", rejected=True, delay=60.0, spent="r1")
    assert (record.failures, record.rejections) == (1, 1)
    assert record.retry_at == pytest.approx(tokens.now() + 60, abs=0.5)
    assert record.refresh is None
    assert (record.token, record.generation) == (issued, 1)
    assert tokens.read() == record


async def test_a_failure_after_an_issued_token_starts_over_and_keeps_its_refresh_token(
    contract: TokenStore,
) -> None:
    """fail(issued=True): the counts start over from this failure and the refresh token
    its answer left replaces the stored one; nothing is committed."""
    tokens = contract
    await tokens.lock(0)
    issued = token("a", tokens.now())
    await tokens.commit(issued, RefreshToken("r1", None), 0)
    await tokens.lock(1)
    await tokens.fail("invalid_client", rejected=True, delay=0.0, spent=None)
    assert await tokens.lock(1) == ACQUIRED
    record = await tokens.fail(
        "expired_on_arrival",
        rejected=False,
        delay=0.0,
        spent="r1",
        issued=True,
        refresh=RefreshToken("r2", None),
    )
    assert (record.failures, record.rejections) == (1, 0)
    assert record.refresh == RefreshToken("r2", None)
    assert (record.generation, record.token) == (1, issued)
    assert await tokens.lock(1) == ACQUIRED
    record = await tokens.fail("timeout", rejected=False, delay=0.0, spent=None, issued=True)
    assert record.refresh is None


async def test_release_drops_the_refresh_token_it_presented(contract: TokenStore) -> None:
    """release(spent=...) ends the lock and drops the refresh token only if it is still the
    one presented; without the lock it changes nothing."""
    tokens = contract
    await tokens.lock(0)
    await tokens.commit(token("a", tokens.now()), RefreshToken("r1", None), 0)
    await tokens.lock(1)
    await tokens.release(spent="other")
    assert tokens.read().refresh == RefreshToken("r1", None)
    await tokens.release(spent="r1")  # not held any more: a no-op
    assert tokens.read().refresh == RefreshToken("r1", None)
    assert await tokens.lock(1) == ACQUIRED
    await tokens.release(spent="r1")
    assert tokens.read().refresh is None
    assert await tokens.lock(1) == ACQUIRED
    assert tokens.read().refresh is None  # the fleet dropped it too


async def test_token_rate_refuses_past_its_count(contract: TokenStore) -> None:
    """The third request of 2 per 60 s waits until the first leaves the window; a refusal
    is not counted."""
    tokens = contract
    assert await tokens.acquire_request() == 0.0
    assert await tokens.acquire_request() == 0.0
    wait = await tokens.acquire_request()
    assert 59 < wait <= 60
    assert 59 < await tokens.acquire_request() <= wait


# -- one token for the fleet ---------------------------------------------------------------


async def test_a_token_committed_by_one_process_is_adopted_by_the_others(
    members: Members,
) -> None:
    """Another store's lock() answers SETTLED with the token, its times on its own clock,
    and the refresh token; a hint adopts it without a lock."""
    a, b, c = members.store(), members.store(), members.store()
    assert await a.lock(0) == ACQUIRED
    issued = token("shared", a.now())
    await a.commit(issued, RefreshToken("shared-r", a.now() + 900), 0)
    assert await b.lock(0) == SETTLED
    theirs = b.read().token
    assert theirs is not None
    assert theirs.value == "shared"
    assert theirs.usable_until == pytest.approx(issued.usable_until, abs=0.05)
    assert b.read().refresh is not None
    c.hint(1)
    await eventually(lambda: held(c) is not None)
    assert held(c) == "shared"
    assert (a.fetched, b.adopted, c.adopted) == (1, 1, 1)
    a.hint(1)  # its own commit's message: nothing to read
    assert a.read().generation == 1


async def test_a_cold_fleet_fetches_once(members: Members) -> None:
    """Five processes' managers asked for a token at once, none cached: one token request;
    the others wait for it and adopt it."""
    gate = asyncio.Event()
    issuer = Issuer(gate=gate)
    managers = [members.manager(issuer) for _ in range(5)]
    asked = [asyncio.create_task(m.token()) for m in managers for _ in range(20)]
    await eventually(lambda: issuer.requests == 1)
    await asyncio.sleep(0.1)
    gate.set()
    assert set(await asyncio.gather(*asked)) == {issuer.issued[0]}
    assert issuer.requests == 1
    stores = members.stores  # the counters the metrics export
    assert sorted(s.fetched for s in stores) == [0, 0, 0, 0, 1]
    assert sum(s.adopted for s in stores) == 4
    assert sum(s.waited for s in stores) >= 4


async def test_one_process_asks_once_at_a_time(members: Members) -> None:
    """Two lock() calls of one store at once: one reaches Redis and takes the lock, the
    other is told its own process holds it."""
    store = members.store()
    first, second = await asyncio.gather(store.lock(0), store.lock(0))
    assert first == ACQUIRED
    assert (second.outcome, second.held_for) == (LockOutcome.HELD, math.inf)
    await store.release(spent=None)
    assert await store.lock(0) == ACQUIRED


async def test_a_late_commit_never_replaces_a_newer_token(members: Members) -> None:
    """A lock that expired and was taken: the late holder's commit is refused
    (lock-taken) and serves only its own process; once the new holder committed, a commit
    from the old generation is stale and the newer token wins everywhere."""
    a, b = members.store(), members.store()
    assert await a.lock(0) == ACQUIRED
    lock_key = f"authproxy:tok:{{{a.cred_id}}}:lock"
    await members.redis.pexpire(lock_key, 1)  # a's fetch outlived its lock
    await asyncio.sleep(0.01)
    assert await b.lock(0) == ACQUIRED
    late = token("late", a.now())
    record = await a.commit(late, None, 0)
    assert record is not None
    assert record.token == late  # used here, not shared
    assert a.lock_taken == 1
    newer = token("newer", b.now())
    assert (await b.commit(newer, None, 0)) is not None
    assert await a.lock(1) == SETTLED  # the fleet's token replaces the local one
    assert held(a) == "newer"
    # A holder whose lock expired, while another fetched and committed, is stale.
    c = members.store()
    assert await c.lock(0) == SETTLED
    assert await c.lock(1) == ACQUIRED
    await members.redis.delete(lock_key)
    assert await b.lock(1) == ACQUIRED
    await b.commit(token("newest", b.now()), None, 1)
    assert await c.commit(token("stale", c.now()), None, 1) is None
    assert c.stale == 1
    assert held(c) == "newest"
    assert await members.store().lock(0) == SETTLED


async def test_a_late_failure_backs_off_only_its_own_process(members: Members) -> None:
    """A failure written after the lock expired and another process took it is this
    process's alone; one written after another process committed adopts that token."""
    a, b = members.store(), members.store()
    lock_key = f"authproxy:tok:{{{a.cred_id}}}:lock"
    assert await a.lock(0) == ACQUIRED
    await members.redis.delete(lock_key)  # a's fetch outlived its lock
    assert await b.lock(0) == ACQUIRED
    record = await a.fail("timeout", rejected=False, delay=30.0, spent=None)
    assert record.retry_at > a.now() + 29
    assert a.lock_taken == 1
    await b.commit(token("b", b.now()), None, 0)
    assert await members.store().lock(0) == SETTLED  # a token, no backoff
    assert await a.lock(0) == SETTLED
    assert held(a) == "b"
    assert await a.lock(1) == ACQUIRED
    await members.redis.delete(lock_key)
    assert await b.lock(1) == ACQUIRED
    await b.commit(token("b2", b.now()), None, 1)
    record = await a.fail("timeout", rejected=False, delay=30.0, spent=None)
    assert (a.stale, held(a), record.retry_at) == (1, "b2", 0.0)


async def test_a_rotating_refresh_token_is_presented_once_across_the_fleet(
    members: Members,
) -> None:
    """Two processes keep a 1 s token fresh through several refreshes, then one leaves and
    the other refreshes with what the first committed: every refresh token is presented
    once, Keycloak refuses nothing, and both serve the fleet's tokens."""
    issuer = Issuer(lifetime=1.0, refresh_lifetime=30.0)
    managers = [members.manager(issuer) for _ in range(2)]
    for tokens in managers:
        tokens.start()
    served: set[str] = set()
    for running in (managers, managers[1:]):
        deadline = time.monotonic() + 1.8
        while time.monotonic() < deadline:
            for tokens in running:
                served.add(await tokens.token())
            await asyncio.sleep(0.05)
        await managers[0].close()  # a process leaves the fleet
    presented = [r for r in issuer.presented if r is not None]
    assert issuer.refused == 0
    assert len(presented) == len(set(presented)) >= 3
    assert issuer.presented[0] is None  # the password grant, once, then refreshes
    # Which process wins the lock while both run is chance; once the first has left, the
    # second refreshes alone, and tokens one fetched the other adopted.
    assert members.stores[1].fetched > 0
    assert sum(s.adopted for s in members.stores) > 0
    assert served <= set(issuer.issued)
    LEAK_WATCH.update(issuer.secrets())


async def test_a_refused_refresh_token_falls_back_to_the_password_grant(
    members: Members,
) -> None:
    """A refresh token the issuer refuses (consumed elsewhere) ends in the password grant
    in the same fetch; the fleet adopts what it brought."""
    issuer = Issuer()
    first, second = members.manager(issuer), members.manager(issuer)
    old = await first.token()
    assert await second.token() == old
    issuer.revoke(issuer.refreshes[0])
    first.invalidate(old)
    renewed = await first.token()
    assert renewed != old
    assert issuer.presented == [None, issuer.refreshes[0], None]
    assert issuer.refused == 1
    second.invalidate(old)
    assert await second.token() == renewed
    assert issuer.requests == 3
    LEAK_WATCH.update(issuer.secrets())


async def test_a_failure_backs_the_whole_fleet_off(members: Members) -> None:
    """One process's failed fetch sets the backoff for all: another process answers at
    once with the issuer's Retry-After, without a second request."""
    issuer = Issuer(
        fail=[TokenEndpointError("http_503", rejected=False, status=503, retry_after=5.0)]
    )
    first, second = members.manager(issuer), members.manager(issuer)
    with pytest.raises(TokenUnavailableError):
        await first.token()
    with pytest.raises(TokenUnavailableError) as refused:
        await second.token()
    assert refused.value.reason == "http_503"
    assert refused.value.retry_after is not None
    assert 4.0 < refused.value.retry_after <= 5.0
    assert issuer.requests == 1
    assert second.status()["consecutive_failures"] == 1


async def test_token_rate_is_exact_across_the_fleet(redis_server: RedisServer) -> None:
    """3 token requests per 2 s shared by three processes: the fourth is refused, whoever
    asks, until the first leaves the window."""
    members = Members(redis_server, auth_table("token_rate = { rate = 3, per = 2 }\n"))
    try:
        stores = [members.store() for _ in range(3)]
        for store in stores:
            assert await store.acquire_request() == 0.0
            await asyncio.sleep(0.3)
        waits = [await store.acquire_request() for store in stores]
        assert all(1.0 < wait <= 1.5 for wait in waits)  # the first leaves 2 s after it came
        await asyncio.sleep(waits[-1] + 0.01)
        assert await stores[1].acquire_request() == 0.0
        assert 0.2 < await stores[2].acquire_request() <= 0.3  # the second is still in
    finally:
        await members.close()


async def test_a_lock_is_kept_while_its_fetch_runs(members: Members) -> None:
    """The holder extends its lock at half its TTL, so a slow token request keeps it."""
    clock = Clock()
    a = members.store(clock=clock)
    assert await a.lock(0) == ACQUIRED
    lock_key = f"authproxy:tok:{{{a.cred_id}}}:lock"
    ttl = await members.redis.pttl(lock_key)
    assert ttl > 6000  # the token request's timeouts (2 s) and a 5 s margin
    await members.redis.pexpire(lock_key, 1000)
    await clock.run(clock.sleep(ttl / 2000 + 0.1))
    deadline = time.monotonic() + 2
    while await members.redis.pttl(lock_key) < 2000:
        assert time.monotonic() < deadline, "the lock was not extended"
        await asyncio.sleep(0.01)
    assert (await members.store().lock(0)).outcome is LockOutcome.HELD
    await a.release(spent=None)
    assert await members.redis.exists(lock_key) == 0


# -- secrets at rest -----------------------------------------------------------------------


async def test_nothing_in_redis_is_usable(members: Members) -> None:
    """After a fetch, a refresh, a failure and token-request counts, no key and no value
    in Redis holds a token, a refresh token or a credential."""
    clock = Clock()
    issuer = Issuer()
    tokens = members.manager(issuer, members.store(clock=clock))
    for _ in range(2):
        tokens.invalidate(await tokens.token())
        clock.now += 1.1  # past the manager's guard against bursts of refusals
    issuer.fail.append(TokenEndpointError("http_503", rejected=False, status=503))
    with pytest.raises(TokenUnavailableError):
        await tokens.token()
    assert issuer.presented == [None, issuer.refreshes[0], issuer.refreshes[1]]
    secrets = [*issuer.secrets(), CLIENT_SECRET, PASSWORD]
    found = await members.keys()
    assert len(found) >= 2  # the token hash and its failure
    for key in found:
        for text in (key, *await _values(members.redis, key)):
            assert not [secret for secret in secrets if secret.encode() in text]
    LEAK_WATCH.update(issuer.secrets())


async def _values(redis: aioredis.Redis, key: bytes) -> list[bytes]:
    """Every value (and hash field) of ``key``, whatever its type."""
    kind = await redis.type(key)
    if kind == b"hash":
        found = await redis.hgetall(key)
        raw: list[object] = [*found.keys(), *found.values()]
    elif kind == b"zset":
        raw = list(await redis.zrange(key, 0, -1))
    else:
        raw = [await redis.get(key)]
    return [value for value in raw if isinstance(value, bytes)]


def test_sealed_values_open_only_where_they_were_sealed() -> None:
    """A sealed value opens for its field and credential only, differs every time, and a
    wrong key or a flipped bit makes it absent rather than an error."""
    auth = auth_table()
    sealer = Sealer.for_credential(auth, None)
    sealed = sealer.seal("access", "bearer-value")
    assert sealer.open("access", sealed) == "bearer-value"
    assert sealer.seal("access", "bearer-value") != sealed
    assert sealer.open("refresh", sealed) is None
    assert Sealer.for_credential(auth, Secret("operator-key")).open("access", sealed) is None
    assert Sealer(b"same-stretched-key", "other-cred").open("access", sealed) is None
    raw = bytearray(base64.b64decode(sealed))
    for at in (0, 12, len(raw) - 1):  # the nonce, the ciphertext, the tag
        flipped = raw.copy()
        flipped[at] ^= 1
        assert sealer.open("access", base64.b64encode(flipped).decode()) is None
    assert sealer.open("access", "not base64!") is None
    assert sealer.open("access", "") is None


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({}, True),
        ({"scope": "openid offline_access"}, False),
        ({"token_url": "http://idp/other"}, False),
        ({"username": "v"}, False),
        ({"password": Secret("rotated")}, False),
        ({"client_secret": Secret("rotated")}, False),
        ({"refresh_at": 0.5, "name": "other"}, True),  # how, not who
    ],
)
def test_the_credential_names_its_keys_and_a_changed_one_gets_new_keys(
    change: dict[str, object], same: bool
) -> None:
    """cred_id: 32 hex digits, the same for the same credential (whatever the table's
    name, and with or without an encryption key), new when who asks or a secret changes."""
    auth = auth_table()
    base = Sealer.for_credential(auth, None).cred_id
    assert len(base) == 32
    assert int(base, 16) >= 0
    changed = replace(auth, **change)  # type: ignore[arg-type]
    assert (Sealer.for_credential(changed, None).cred_id == base) is same
    assert Sealer.for_credential(auth, Secret("k")).cred_id == base


async def test_a_token_sealed_under_another_key_is_fetched_anew(members: Members) -> None:
    """A record this process cannot open (another encryption key) counts as absent: it
    is counted and replaced, never a crash."""
    a = members.store()
    other = members.store(sealer=Sealer.for_credential(members.auth, Secret("another key")))
    assert await a.lock(0) == ACQUIRED
    await a.commit(token("a", a.now()), RefreshToken("ar", None), 0)
    assert await other.lock(0) == ACQUIRED
    assert other.seal_failures == 2  # the token and the refresh token
    assert other.read().refresh is None  # what did not open is not presented
    assert await other.commit(token("b", other.now()), None, 0) is not None
    assert await a.lock(1) == ACQUIRED  # a in turn cannot open b's token
    assert a.seal_failures == 1


# -- Redis away, and Redis that lost everything ----------------------------------------------


async def test_while_redis_is_stopped_the_cache_serves_and_refreshes_stay_local(
    members: Members,
) -> None:
    """With Redis stopped (SIGSTOP) the cached token serves; a refresh falls back to this
    process alone, no call waiting past the link's bound (none at all once the breaker is
    open); once Redis answers again, the next fetch is the fleet's, presenting the
    refresh token this process holds, and the others adopt it."""
    clock, link_clock = Clock(), Clock()  # the manager's and store's; the link's breaker
    issuer = Issuer()
    tokens = members.manager(issuer, members.store(clock=clock, link_clock=link_clock))
    other = members.manager(issuer)
    first = await tokens.token()
    assert await other.token() == first
    members.server.pause()
    try:
        assert await tokens.token() == first  # no call to Redis
        served = [first]
        for _ in range(4):
            clock.now += 1.1  # past the manager's guard against bursts of refusals
            tokens.invalidate(served[-1])
            started = time.monotonic()
            served.append(await tokens.token())
            assert time.monotonic() - started < BOUND + 0.1
        assert len(set(served)) == 5
        assert issuer.requests == 5
        assert tokens.status()["ready"]
    finally:
        members.server.resume()
    assert await members.store().lock(0) == SETTLED  # the fleet never saw the local ones
    link_clock.now += BREAKER_PROBE
    clock.now += 1.1
    tokens.invalidate(served[-1])
    shared = await tokens.token()
    assert issuer.presented[-1] == issuer.refreshes[4]  # its own: the fleet's was spent
    assert issuer.refused == 0
    other.invalidate(first)
    assert await other.token() == shared
    assert issuer.requests == 6
    LEAK_WATCH.update(issuer.secrets())


async def test_a_flushed_redis_costs_one_fetch(members: Members) -> None:
    """After FLUSHALL, three processes that all need a new token make one request."""
    issuer = Issuer()
    managers = [members.manager(issuer) for _ in range(3)]
    first = await managers[0].token()
    assert [await m.token() for m in managers[1:]] == [first, first]
    await members.redis.flushall()
    for tokens in managers:
        tokens.invalidate(first)
    renewed = await asyncio.gather(*(m.token() for m in managers))
    assert issuer.requests == 2
    assert set(renewed) == {issuer.issued[1]}
    LEAK_WATCH.update(issuer.secrets())


async def test_token_rate_while_redis_is_away_is_this_process_share(rated: Members) -> None:
    """With Redis gone, a process counts its token requests against rate // share of
    token_rate (at least one)."""
    store = rated.store(fallback_share=2)
    rated.server.stop()
    assert await store.acquire_request() == 0.0  # 2 per 60 s, shared by 2: one here
    assert await store.acquire_request() > 0
