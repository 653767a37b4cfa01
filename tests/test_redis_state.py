"""The redis backend as a whole (proxy/state/redis.py) against a real redis-server: what
it shares and what it leaves per process, the fleet it sees, hints over pub/sub with the
poll behind them, and a Redis that is away at start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import pytest
from redis import asyncio as aioredis
from structlog.testing import capture_logs

from proxy import config as config_module
from proxy.state.redis import RedisState
from proxy.state.redis_tokens import RedisTokenStore

from .redisserver import PASSWORD, RedisServer

ROUTES = (
    '[[routes]]\nprefix = "/a"\nupstream = "http://127.0.0.1:9"\n'
    "rate_limit = { rate = 100, burst = 40 }\n"
    '[[routes]]\nprefix = "/b"\nupstream = "http://127.0.0.1:9"\n'
    'rate_limit = { rate = 100, burst = 40, scope = "process" }\n'
)


def state_config(url: str, extra: str = "") -> config_module.Config:
    text = ROUTES + f'[state]\nbackend = "redis"\nurl = "{url}"\nkey_prefix = "t:"\n{extra}'
    return config_module.loads(text, {})


MakeState = Callable[..., Awaitable[RedisState]]


@pytest.fixture
async def make_state(redis_server: RedisServer) -> AsyncIterator[MakeState]:
    made: list[RedisState] = []

    async def make(url: str | None = None, workers: int = 1, start: bool = True) -> RedisState:
        state = RedisState(state_config(url or redis_server.url).state, workers=workers)
        made.append(state)
        if start:
            await state.start()
        return state

    yield make
    for state in made:
        await state.close()


async def test_global_limits_are_whole_and_process_ones_are_divided(
    make_state: MakeState, redis_server: RedisServer
) -> None:
    """With --workers 4 a global limit is the fleet's whole limit in every worker; one with
    scope = "process" is divided as the local backend divides it."""
    state = await make_state(workers=4, start=False)
    shared = state.share(state_config(redis_server.url))
    glob, local = (r.rate_limit for r in shared.routes)
    assert glob is not None
    assert (glob.rate, glob.burst) == (100, 40)
    assert local is not None
    assert (local.rate, local.burst) == (25, 10)


async def test_the_fleet_is_counted_and_left_at_close(make_state: MakeState) -> None:
    """Each process beats in Redis at start: both see a fleet of two; one that closes
    leaves it at once."""
    a = await make_state()
    b = await make_state()
    await a._beat()
    assert (a.health()["fleet_size"], b.health()["fleet_size"]) == (2, 2)
    await b.close()
    await a._beat()
    assert a.health()["fleet_size"] == 1


async def test_health_shows_the_fleet_never_the_password(make_state: MakeState) -> None:
    health = (await make_state()).health()
    assert health["backend"] == "redis"
    assert health["up"] is True
    assert health["fallback"] is False
    assert PASSWORD not in str(health)
    assert health["url"].startswith("redis://***@127.0.0.1:")


async def test_a_pause_hint_reaches_a_peer_over_pub_sub(
    make_state: MakeState, redis_server: RedisServer
) -> None:
    """A hint alone (no pause key to poll) pauses the peer's route: pub/sub works."""
    b = await make_state()
    pause = b.route_pause("/a", "http://127.0.0.1:9")
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        async with asyncio.timeout(3):
            while pause.remaining() == 0:
                await client.publish(b.fleet.channel, f"pause {pause_key(b, pause)} 1500 other")
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    assert 1.0 < pause.remaining() <= 1.6


async def test_a_pause_holds_when_its_hint_is_lost(
    make_state: MakeState, redis_server: RedisServer
) -> None:
    """A pause key set without any hint reaches the peer through the poll (250 ms)."""
    b = await make_state()
    pause = b.route_pause("/a", "http://127.0.0.1:9")
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.set(pause_key(b, pause), "1", px=2000)
    finally:
        await client.aclose()
    async with asyncio.timeout(2):
        while pause.remaining() == 0:
            await asyncio.sleep(0.02)
    assert pause.remaining() > 1.0


def pause_key(state: RedisState, pause: object) -> str:
    key: str = pause.key  # type: ignore[attr-defined]
    return key


async def test_redis_away_at_start_serves_on_the_fallback(
    make_state: MakeState, redis_server: RedisServer
) -> None:
    """Start-up does not wait for a Redis that is down: the state says it is away and the
    fallback is on; the breaker logs state_backend_down once."""
    url = redis_server.url
    redis_server.stop()
    with capture_logs() as logs:
        state = await make_state(url)
        for _ in range(3):
            await state._beat()
    assert state.health()["up"] is False
    assert state.health()["fallback"] is True
    assert [e["event"] for e in logs].count("state_backend_down") == 1


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("redis://10.0.0.5:6379/0", True),
        ("redis://redis.internal:6379/0", True),
        ("rediss://10.0.0.5:6379/0", False),
        ("redis://127.0.0.1:6379/0", False),
        ("redis://[::1]:6379/0", False),
        ("redis://localhost:6379/0", False),
        ("unix:///run/redis.sock", False),
    ],
)
def test_plaintext_redis_off_this_machine_is_warned_about(url: str, warned: bool) -> None:
    """Tokens and limits cross the network to a Redis on another machine: without TLS the
    proxy says so at start (nothing is sent here: the check reads the URL)."""
    state = RedisState(state_config(url).state)
    with capture_logs() as logs:
        state.warn_plaintext()
    assert [e["event"] for e in logs] == (["state_backend_plaintext"] if warned else [])


async def test_the_readme_acl_user_is_enough(redis_server: RedisServer) -> None:
    """The ACL the README gives a fleet's Redis user (its prefix only) lets every part of
    the backend work: heartbeat, pub/sub, leases, pauses and the token scripts."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rules = readme.split("`ACL SETUSER authproxy on >PASSWORD ", 1)[1].split("`", 1)[0]
    rules = " ".join(rules.split())  # wrapped over lines in the README
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        await admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", "authproxy", "on", ">acl-pass", *rules.split()
        )
    finally:
        await admin.aclose()
    url = f"redis://authproxy:acl-pass@127.0.0.1:{redis_server.port}/0"
    text = ROUTES + AUTH + f'[state]\nbackend = "redis"\nurl = "{url}"\n'
    config = config_module.loads(text, {})
    state = RedisState(config.state)
    try:
        await state.start()
        await state._beat()
        assert state.health()["up"] is True
        limit = config.routes[0].rate_limit
        assert limit is not None
        capacity = state.capacity("route /a", limit)
        async with asyncio.timeout(2):
            await capacity.acquire()
        await capacity.close()
        state.route_pause("/a", "http://127.0.0.1:9").pause(1.0, "upstream_429")
        store = state.token_store(config.auth["t"])
        assert await store.acquire_request() == 0.0
        assert (await store.lock(0)).outcome.value == "acquired"
        await store.release(spent=None)
        await asyncio.sleep(0.3)  # the pause announcement and a poll ran
        calls = state.call_stats().outcomes
        assert calls, calls
        assert all(outcome == "ok" for (_, outcome) in calls), calls
    finally:
        await state.close()


AUTH = (
    '[auth.t]\ntype = "client_credentials"\ntoken_url = "http://127.0.0.1:9/token"\n'
    'client_id = "c"\nclient_secret = "acl-test-secret"\n'
)


def auth_tables(secret: str) -> Mapping[str, config_module.AuthConfig]:
    text = ROUTES + "".join(
        f'[auth.{name}]\ntype = "client_credentials"\n'
        f'token_url = "http://127.0.0.1:9/token"\nclient_id = "{name}"\n'
        f'client_secret = "{secret}"\n'
        for name in ("one", "two")
    )
    return config_module.loads(text, {}).auth


async def test_a_reload_stretches_new_secrets_off_the_event_loop(
    make_state: MakeState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sealing key of each changed table is derived (scrypt, tens of ms) in a thread
    before a reload builds on it, not on the loop that serves requests; unchanged tables
    are not derived again, and a changed secret gets a key of its own."""
    import threading

    from proxy.state import sealing

    where: list[str] = []
    stretch = sealing._stretched

    def spy(*args: object) -> bytes:
        where.append(threading.current_thread().name)
        return stretch(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sealing, "_stretched", spy)
    state = await make_state()
    first = auth_tables("s3cret-one")
    await state.prepare(first.values())
    assert len(where) == 2
    assert threading.main_thread().name not in where
    stores = [state.token_store(auth) for auth in first.values()]
    assert all(isinstance(store, RedisTokenStore) for store in stores)
    await state.prepare(first.values())
    assert len(where) == 2  # nothing changed: nothing derived, at prepare or build
    rotated = auth_tables("s3cret-two")
    await state.prepare(rotated.values())
    assert len(where) == 4
    assert threading.main_thread().name not in where
    fresh = state.token_store(rotated["one"])
    assert len(where) == 4
    assert isinstance(fresh, RedisTokenStore)
    assert isinstance(stores[0], RedisTokenStore)
    assert fresh.cred_id != stores[0].cred_id
    for store in (*stores, fresh):
        assert isinstance(store, RedisTokenStore)
        await store.close()
