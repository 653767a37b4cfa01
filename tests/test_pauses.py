"""Route pauses shared by a fleet (proxy/state/pauses.py) against a real redis-server: a
pause one process sees reaches the others through the pause key, only ever grows, and a
Redis that is away never holds up the process that saw the 429."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from proxy.state.fleet import Fleet
from proxy.state.pauses import PAUSE_LUA, SharedPause, pause_key, poll
from proxy.state.redis_link import RedisLink

from .redisserver import RedisServer

ROUTE, UPSTREAM = "/travtus", "http://127.0.0.1:9/base"


@pytest.fixture
async def fleets(redis_server: RedisServer) -> AsyncIterator[tuple[Fleet, Fleet]]:
    """Two processes' views of one fleet: each with its own link, as separate processes."""
    made = (
        Fleet(RedisLink(redis_server.url, 0.2), "test:"),
        Fleet(RedisLink(redis_server.url, 0.2), "test:"),
    )
    yield made
    for fleet in made:
        await fleet.link.close()


async def settle(pause: SharedPause) -> None:
    """Until the background announcement of ``pause`` is written."""
    async with asyncio.timeout(2):
        while pause._tasks:
            await asyncio.sleep(0.01)


async def test_a_pause_seen_by_one_process_holds_every_process(
    fleets: tuple[Fleet, Fleet],
) -> None:
    """Process A pauses on a 429; B, which saw nothing, learns the time left from Redis."""
    a = SharedPause(fleets[0], ROUTE, UPSTREAM)
    b = SharedPause(fleets[1], ROUTE, UPSTREAM)
    a.pause(2.0, "upstream_429")
    assert 1.9 < a.remaining() <= 2.0
    await settle(a)
    assert b.remaining() == 0.0
    await poll(fleets[1], [b])
    assert 1.8 < b.remaining() <= 2.1
    assert (a.local_events, b.peer_events) == (1, 1)


async def test_a_pause_only_grows_in_redis(fleets: tuple[Fleet, Fleet]) -> None:
    """A shorter pause announced while a longer one runs leaves the longer one."""
    fleet = fleets[0]
    key = pause_key(fleet, ROUTE, UPSTREAM)

    async def announce(ms: int) -> int:
        left: int = await fleet.link.call(
            lambda r: r.eval(PAUSE_LUA, 1, key, ms, fleet.channel, fleet.owner)
        )
        return left

    assert await announce(3000) == 3000
    assert 2500 < await announce(1000) <= 3000
    assert await announce(5000) == 5000


async def test_routes_and_upstreams_have_their_own_pauses(fleets: tuple[Fleet, Fleet]) -> None:
    """The same route in front of another upstream is another pause: a route moved to a
    new vendor starts unpaused, as with the local backend."""
    a = SharedPause(fleets[0], ROUTE, UPSTREAM)
    other_route = SharedPause(fleets[1], "/travis", UPSTREAM)
    other_upstream = SharedPause(fleets[1], ROUTE, "http://127.0.0.1:10")
    a.pause(2.0, "upstream_429")
    await settle(a)
    await poll(fleets[1], [other_route, other_upstream])
    assert other_route.remaining() == other_upstream.remaining() == 0.0


async def test_redis_away_never_holds_up_the_pause(
    redis_server: RedisServer, fleets: tuple[Fleet, Fleet]
) -> None:
    """With Redis stopped (SIGSTOP) the process that saw the 429 pauses at once, and the
    announcement gives up within the link's bound."""
    a = SharedPause(fleets[0], ROUTE, UPSTREAM)
    redis_server.pause()
    try:
        started = time.monotonic()
        a.pause(1.0, "upstream_429")
        assert time.monotonic() - started < 0.05
        assert a.remaining() > 0.9
        await settle(a)  # the announcement failed quietly, within the guard (3 timeouts)
        assert time.monotonic() - started < 1.0
    finally:
        redis_server.resume()
