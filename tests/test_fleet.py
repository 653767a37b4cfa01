"""A fleet: several real proxy processes (single ones and `--workers 2` groups) sharing one
real Redis, in front of the vendor sandbox and a recording upstream.

What a user of several replicas relies on: one token request per credential for the whole
fleet, one rate limit held at the upstream however the load is spread, one pause after a
429, Travelyzer's token cap held fleet-wide, and a Redis that dies or hangs costing no
request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
from redis import asyncio as aioredis

from .fleet import Member, Recorder, busiest, drive, start_member
from .nginx_ref import ReferenceNginx
from .redisserver import RedisServer
from .test_credentials import DEMO_CONFIG, ROOT, Sandbox, sandbox  # noqa: F401 (the fixture)

pytestmark = pytest.mark.timeout(60)

RATE, BURST = 200, 20


def shared(redis: RedisServer) -> dict[str, str]:
    """The environment that turns the demo config's [state] to this Redis."""
    return {"STATE_BACKEND": "redis", "REDIS_URL": redis.url}


def state_table(redis: RedisServer, extra: str = "") -> str:
    return f'\n[state]\nbackend = "redis"\nurl = "{redis.url}"\nkey_prefix = "fleet:"\n{extra}\n'


StartFleet = Callable[..., Awaitable[list[Member]]]


@pytest.fixture
async def start_fleet(tmp_path: Path) -> AsyncIterator[StartFleet]:
    """Start members from one config text: each item of ``shapes`` is the extra arguments
    of one member (``["--workers", "2"]`` makes it a group)."""
    members: list[Member] = []

    async def start(
        text: str, *shapes: list[str], env: dict[str, str] | None = None
    ) -> list[Member]:
        path = tmp_path / "routes.toml"
        path.write_text(text)
        started = await asyncio.gather(*(start_member(path, *shape, env=env) for shape in shapes))
        members.extend(started)
        return list(started)

    yield start
    await asyncio.gather(*(m.stop() for m in members))


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    made = Recorder()
    await made.start()
    yield made
    await made.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as made:
        yield made


def limited_route(recorder: Recorder, extra: str = "") -> str:
    return (
        '[server]\nhost = "127.0.0.1"\n\n[[routes]]\nprefix = "/r"\n'
        f'upstream = "{recorder.url}"\n'
        f"rate_limit = {{ rate = {RATE}, burst = {BURST}, max_wait = 2{extra} }}\n"
    )


async def test_one_token_request_per_credential_for_the_whole_fleet(
    sandbox: Sandbox,  # noqa: F811
    redis_server: RedisServer,
    start_fleet: StartFleet,
    session: aiohttp.ClientSession,
) -> None:
    """A group of two workers and a single process, cold: 100 concurrent requests spread
    over them make one token request per credential, and every request succeeds."""
    text = DEMO_CONFIG.replace("${SANDBOX_URL:-http://127.0.0.1:9000}", sandbox.url)
    members = await start_fleet(text, ["--workers", "2"], [], env=shared(redis_server))
    paths = [
        "/travtus/messages/",
        "/travis/api/v1/road-events",
        "/travelyzer/v1/geocoding/forward?query=Berlin",
    ]

    async def one(n: int) -> int:
        async with session.get(members[n % 2].url + paths[n % 3]) as r:
            await r.read()
            return r.status

    statuses = await asyncio.gather(*(one(n) for n in range(100)))
    assert statuses.count(200) == 100, statuses
    tokens = await sandbox.log(kind="token")
    assert sorted(e["vendor"] for e in tokens) == ["travelyzer", "travis", "travtus"]

    # Nothing in Redis gives a token, a refresh token or a secret away.
    secrets = {
        *await sandbox.issued_tokens(),
        *await sandbox.refresh_tokens(),
        "sandbox-travtus-secret",
        "sandbox-travis-secret",
        "sandbox-travis-password",
        "sandbox-travelyzer-secret",
    }
    assert len(secrets) > 6  # the tokens are there to look for
    dump = await redis_dump(redis_server)
    assert dump  # the fleet's state is there
    for secret in secrets:
        assert secret not in dump


async def redis_dump(redis: RedisServer) -> str:
    """Every key and value in Redis, as text (hashes, strings, sets; whatever is there)."""
    client = aioredis.Redis.from_url(redis.url)
    parts: list[str] = []
    try:
        async for key in client.scan_iter():
            parts.append(repr(key))
            kind = (await client.type(key)).decode()  # type: ignore[union-attr]
            if kind == "string":
                parts.append(repr(await client.get(key)))
            elif kind == "hash":
                parts.append(repr(await client.hgetall(key)))
            elif kind == "zset":
                parts.append(repr(await client.zrange(key, 0, -1, withscores=True)))
            else:
                parts.append(repr(await client.dump(key)))
    finally:
        await client.aclose()
    return "\n".join(parts)


async def test_the_global_limit_holds_at_the_upstream_with_uneven_load(
    redis_server: RedisServer,
    recorder: Recorder,
    start_fleet: StartFleet,
    session: aiohttp.ClientSession,
) -> None:
    """Load at 1.5x the limit, 80% through a two-worker group and 20% through a single
    process: the upstream never sees more than burst + rate*t in any window, and the
    fleet together gets close to the whole rate (not 1/3 of it per process)."""
    members = await start_fleet(
        limited_route(recorder) + state_table(redis_server), ["--workers", "2"], []
    )
    urls = [m.url for m in members]
    outcomes = await drive(session, urls, [4, 1], RATE * 1.5, 3.0, "/r/x")
    times = await recorder.times()
    for window in (0.01, 0.1, 0.5, 1.0):
        assert busiest(times, window) <= BURST + RATE * window + 1, (window, busiest(times, window))
    steady = [t for t in times if t >= times[0] + 0.5]
    achieved = (len(steady) - 1) / (steady[-1] - steady[0])
    assert achieved >= 0.9 * RATE, achieved
    for member in range(2):
        assert any(o.status == 200 for o in outcomes if o.member == member)
    # Refused, never failed: over the limit a request waits (max_wait) or gets a 429.
    assert {o.status for o in outcomes} <= {200, 429}


async def test_a_429_through_one_process_pauses_every_process(
    redis_server: RedisServer,
    recorder: Recorder,
    start_fleet: StartFleet,
    session: aiohttp.ClientSession,
) -> None:
    """The upstream answers one request, through process A, 429 with Retry-After: 2:
    from then on no process sends that route anything until the pause is over."""
    text = (
        '[server]\nhost = "127.0.0.1"\n\n[[routes]]\nprefix = "/r"\n'
        f'upstream = "{recorder.url}"\n' + state_table(redis_server)
    )
    a, b = await start_fleet(text, [], [])
    await recorder.throttle("/first", 2)

    async def get_first() -> int:
        async with session.get(a.url + "/r/first") as r:  # retried by A after the pause
            await r.read()
            return r.status

    first = asyncio.ensure_future(get_first())
    async with asyncio.timeout(5):
        while not await recorder.arrivals():
            await asyncio.sleep(0.01)
    t429 = (await recorder.arrivals())[0][0]
    await asyncio.sleep(0.3)  # a lost hint costs one poll (250 ms) at most
    outcomes = await drive(session, [a.url, b.url], [1, 1], 40, 1.2, "/r/during")
    assert await first == 200
    during = [t for t, path in await recorder.arrivals() if path == "/during"]
    assert len(during) == 48
    assert min(during) >= t429 + 1.9  # held back by both, until the pause ended
    assert all(o.status == 200 for o in outcomes)


async def test_travelyzer_token_rate_is_held_across_the_fleet(
    sandbox: Sandbox,  # noqa: F811
    redis_server: RedisServer,
    start_fleet: StartFleet,
    session: aiohttp.ClientSession,
) -> None:
    """token_rate = 1 a minute, tokens that live 2 s: two processes together make one
    token request in the minute, not one each."""
    await sandbox.control(token_lifetime={"travelyzer": 2})
    text = DEMO_CONFIG.replace("${SANDBOX_URL:-http://127.0.0.1:9000}", sandbox.url)
    text = text.replace(
        "token_rate = { rate = 100, per = 60 }", "token_rate = { rate = 1, per = 60 }"
    )
    a, b = await start_fleet(text, [], [], env=shared(redis_server))
    for _ in range(8):
        for member in (a, b):
            async with session.get(
                member.url + "/travelyzer/v1/geocoding/forward?query=Berlin"
            ) as r:
                await r.read()
        await asyncio.sleep(0.5)
    tokens = await sandbox.log(vendor="travelyzer", kind="token")
    assert len(tokens) == 1


async def test_keycloak_rotation_through_several_refreshes_without_reuse(
    sandbox: Sandbox,  # noqa: F811
    redis_server: RedisServer,
    start_fleet: StartFleet,
    session: aiohttp.ClientSession,
) -> None:
    """TRAVIS tokens live 3 s and each refresh token may be redeemed once: over several
    lifetimes, two processes refresh in turn, never presenting one twice."""
    await sandbox.control(token_lifetime={"travis": 3})
    text = DEMO_CONFIG.replace("${SANDBOX_URL:-http://127.0.0.1:9000}", sandbox.url)
    a, b = await start_fleet(text, [], [], env=shared(redis_server))
    for _ in range(16):
        for member in (a, b):
            async with session.get(member.url + "/travis/api/v1/road-events") as r:
                await r.read()
                assert r.status == 200
        await asyncio.sleep(0.5)
    tokens = await sandbox.log(vendor="travis", kind="token")
    refreshes = [e for e in tokens if e["grant_type"] == "refresh_token"]
    assert len(refreshes) >= 2
    assert all(e["status"] == 200 for e in tokens), [e["status"] for e in tokens]
    presented = [(e["fields"] or {})["refresh_token"] for e in refreshes]
    assert len(set(presented)) == len(presented)
    assert [e["grant_type"] for e in tokens].count("password") == 1


@pytest.mark.parametrize("outage", ["kill", "stop"])
async def test_redis_away_mid_run_costs_no_request(
    outage: str,
    redis_server: RedisServer,
    recorder: Recorder,
    start_fleet: StartFleet,
    session: aiohttp.ClientSession,
) -> None:
    """Redis killed (SIGKILL, then restarted) or hung (SIGSTOP, then SIGCONT) in the middle
    of steady load under the limit: every request succeeds within max_wait, each process
    falls back to its share and says so once, the bound holds through the outage and the
    recovery, and each process says when Redis is back."""
    members = await start_fleet(limited_route(recorder) + state_table(redis_server), [], [])
    urls = [m.url for m in members]

    async def outage_at(start: float, end: float) -> None:
        await asyncio.sleep(start)
        if outage == "kill":
            redis_server.kill()
        else:
            redis_server.pause()
        await asyncio.sleep(end - start)
        if outage == "kill":
            redis_server.start()
        else:
            redis_server.resume()

    chaos = asyncio.ensure_future(outage_at(1.0, 3.0))
    outcomes = await drive(session, urls, [1, 1], RATE * 0.7, 5.0, "/r/x")
    await chaos
    assert all(o.status == 200 for o in outcomes), {o.status for o in outcomes}
    assert max(o.seconds for o in outcomes) < 2.0  # max_wait
    times = await recorder.times()
    for window in (0.1, 0.5, 1.0):
        assert busiest(times, window) <= BURST + RATE * window + 1, (window, busiest(times, window))
    await asyncio.sleep(2.5)  # the heartbeat (every 2 s) finds Redis back at the latest
    for member in members:
        assert len(member.events("state_backend_down")) == 1, member.lines[-20:]
        assert member.events("state_backend_up"), member.lines[-20:]


async def test_the_compose_fleet_runs_as_written(
    sandbox: Sandbox,  # noqa: F811
    redis_server: RedisServer,
    tmp_path: Path,
    session: aiohttp.ClientSession,
) -> None:
    """compose.yaml's fleet without Docker: its two proxy replicas run as it starts them
    (command, config, environment; Redis and the sandbox at loopback addresses), behind
    nginx with deploy/compose/nginx.conf. Through the one port, requests are spread over
    both, one token serves them all, and /-/status shows the fleet."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"redis", "sandbox", "proxy-1", "proxy-2", "lb"} <= set(services)
    replicas = [services["proxy-1"], services["proxy-2"]]
    assert replicas[0] == replicas[1]  # one fleet: the same url and key_prefix
    command, environment = replicas[0]["command"], dict(replicas[0]["environment"])
    assert command[:3] == ["python", "-m", "proxy"]
    assert environment["STATE_BACKEND"] == "redis"
    config = ROOT / command[command.index("--config") + 1].removeprefix("/app/")
    environment.update(SANDBOX_URL=sandbox.url, REDIS_URL=redis_server.url)
    members = [await start_member(config, env=environment) for _ in replicas]
    nginx = ReferenceNginx(tmp_path / "nginx")
    try:
        port = await nginx.balancer(
            (ROOT / "deploy" / "compose" / "nginx.conf").read_text(),
            {f"proxy-{i + 1}:8080": int(m.url.rsplit(":", 1)[1]) for i, m in enumerate(members)},
        )
        for _ in range(20):
            async with session.get(f"http://127.0.0.1:{port}/travtus/messages/") as r:
                assert r.status == 200, await r.text()
        async with asyncio.timeout(10):  # a heartbeat every 2 s counts the other in
            while True:
                async with session.get(f"http://127.0.0.1:{port}/-/status") as r:
                    state = (await r.json())["state"]
                if state["fleet_size"] == 2:
                    break
                await asyncio.sleep(0.2)
        assert (state["backend"], state["up"], state["fleet_size"]) == ("redis", True, 2)
        assert "s3cret" not in str(state)
        assert len(await sandbox.log(vendor="travtus", kind="token")) == 1
        served = [len(m.events("access")) for m in members]
        assert all(served), served  # round robin reached both replicas
    finally:
        nginx.stop()
        for member in members:
            await member.stop()
