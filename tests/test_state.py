"""The state seam (proxy/state/): this process's backend, the limits' line over the
capacity it hands out, and the runtime that opens it once and keeps it across reloads.
Nothing here sleeps for real."""

from __future__ import annotations

import asyncio

import pytest

from proxy import config as config_module
from proxy.config import RateLimitConfig
from proxy.errors import RateLimitedError
from proxy.limits import RateLimit
from proxy.observe.metrics import Metrics
from proxy.runtime import Runtime
from proxy.state.base import MAX_PAUSE
from proxy.state.local import LocalPause, LocalState, local_bucket

from .fakeclock import Clock


class Slots:
    """A Capacity whose slots the test hands out one by one."""

    def __init__(self, free: int = 0) -> None:
        self.free = free
        self.closed = False
        self._released = asyncio.Event()

    def has_capacity(self) -> bool:
        return self.free > 0

    async def acquire(self) -> None:
        while self.free == 0:
            self._released.clear()
            await self._released.wait()
        self.free -= 1

    def give(self, count: int = 1) -> None:
        self.free += count
        self._released.set()

    async def close(self) -> None:
        self.closed = True


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_pause_only_grows_and_never_past_the_cap() -> None:
    """A shorter pause asked for during a longer one changes nothing; none passes
    MAX_PAUSE; the total counts each paused second once."""
    clock = Clock()
    pause = LocalPause("/v", clock)
    assert pause.remaining() == 0
    pause.pause(10, "upstream_429")
    pause.pause(3, "upstream_429")
    assert pause.remaining() == 10
    clock.now += 4
    pause.pause(10, "upstream_429")  # ends at 14 s from the start: 4 s more
    assert pause.remaining() == 10
    assert pause.paused_seconds == 14
    pause.pause(10 * MAX_PAUSE, "upstream_429")
    assert pause.remaining() == MAX_PAUSE
    clock.now += MAX_PAUSE
    assert pause.status() == {
        "paused": False,
        "remaining_s": 0.0,
        "paused_total_s": round(4 + MAX_PAUSE, 3),
    }


@pytest.mark.parametrize(
    ("rate", "per", "burst", "held_at_once"),
    [
        (10000, 1.0, 5000, 4800),  # 20 ms of traffic kept back for transit
        (100, 1.0, 100, 98),
        (1, 1.0, 1, 1),  # a small limit keeps every slot it was given
        (5, 60.0, 10, 10),
        (1000, 1.0, 4, 2),  # never more than half the burst held back
    ],
)
def test_local_capacity_keeps_transit_room(
    rate: float, per: float, burst: float, held_at_once: int
) -> None:
    """This process's bucket holds the burst less the transit margin, and drains at the
    configured rate: the sustained rate is not cut."""
    bucket = local_bucket(RateLimitConfig(rate=rate, per=per, burst=burst))
    assert bucket.max_rate == held_at_once
    assert bucket.max_rate / bucket.time_period == pytest.approx(rate / per)


async def test_local_capacity_is_taken_without_waiting_until_it_runs_out() -> None:
    """The fast path: slots are taken without suspending while the bucket has them."""
    bucket = LocalState().capacity("route /v", RateLimitConfig(rate=5, per=60.0, burst=10))
    for _ in range(10):
        assert bucket.has_capacity()
        await bucket.acquire()
    assert not bucket.has_capacity()


async def test_waiters_get_slots_first_come_first_served() -> None:
    """Requests that wait for a limit are let through in the order they came."""
    slots = Slots()
    limit = RateLimit("route /v", RateLimitConfig(rate=100, burst=1, max_wait=60), slots)
    order: list[int] = []

    async def request(n: int) -> None:
        await limit.acquire()
        order.append(n)

    tasks = []
    for n in range(5):
        tasks.append(asyncio.create_task(request(n)))
        await settle()
    assert limit.status()["waiting"] == 5
    for _ in range(5):
        slots.give()
        await settle()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    await limit.close()
    assert slots.closed  # a reload that replaces a limit stops its capacity too


async def test_a_wait_past_max_wait_is_refused_at_once() -> None:
    """A request whose place in line means a wait beyond max_wait is told so at once,
    with the wait it would have had."""
    slots = Slots()
    limit = RateLimit("route /v", RateLimitConfig(rate=2, burst=1, max_wait=1.0), slots)
    first = asyncio.create_task(limit.acquire())
    await settle()
    # One ahead: this one would wait 2 slots at 2/s = 1 s, within max_wait; a third 1.5 s.
    second = asyncio.create_task(limit.acquire())
    await settle()
    with pytest.raises(RateLimitedError) as refused:
        await limit.acquire()
    assert refused.value.retry_after == pytest.approx(1.5)
    assert limit.status()["rejected"] == 1
    slots.give(2)
    assert await first >= 0
    assert await second >= 0
    await limit.close()


async def test_a_waiter_that_leaves_frees_its_turn() -> None:
    """A client that gives up its wait does not take a slot from the next one in line."""
    slots = Slots()
    limit = RateLimit("route /v", RateLimitConfig(rate=100, burst=1, max_wait=60), slots)
    gone = asyncio.create_task(limit.acquire())
    await settle()
    stays = asyncio.create_task(limit.acquire())
    await settle()
    gone.cancel()
    await settle()
    slots.give()
    await asyncio.wait_for(stays, 1)
    assert slots.free == 0  # the one slot went to the request that stayed
    await limit.close()


def _config(extra: str = "") -> config_module.Config:
    return config_module.loads(
        '[auth.a]\ntype = "client_credentials"\ntoken_url = "http://127.0.0.1:9/t"\n'
        'client_id = "id"\nclient_secret = "secret"\n'
        '[[routes]]\nprefix = "/a"\nupstream = "http://127.0.0.1:9"\nauth = "a"\n'
        "rate_limit = { rate = 10 }\n" + extra,
        {},
    )


async def test_the_runtime_opens_one_state_and_keeps_it_across_reloads() -> None:
    """The state backend comes from [state]; a reload keeps the same one, and with it the
    pauses and limits a reload must not forget."""
    metrics = Metrics()
    first = Runtime(_config('[state]\nbackend = "local"\n'), metrics)
    assert first.state.backend == "local"
    assert first.state.health() == {"backend": "local", "up": True}
    first.targets["/a"].route_pause.pause(30, "upstream_429")
    second = Runtime(_config(), metrics, previous=first)
    assert second.state is first.state
    assert second.targets["/a"].route_pause.remaining() > 29
    assert second.targets["/a"].limits == first.targets["/a"].limits
    await first.close()
    await second.close()
    await second.state.close()


def test_workers_that_keep_their_own_state_each_enforce_their_share() -> None:
    """With N workers each keeping its own limits, each enforces 1/N of every rate limit
    (burst at least one) and of token_rate (at least one request); one process all of it."""
    loaded = config_module.loads(
        '[auth.a]\ntype = "travelyzer"\ntoken_url = "http://127.0.0.1:9/t"\n'
        'api_key = "k"\napi_secret = "s"\ntoken_rate = { rate = 100, per = 60 }\n'
        "rate_limit = { rate = 30, burst = 3 }\n"
        '[[routes]]\nprefix = "/a"\nupstream = "http://127.0.0.1:9"\nauth = "a"\n'
        "rate_limit = { rate = 10 }\n"
        '[clients.c]\nkey = "client-key-0123456789"\nrate_limit = { rate = 4, per = 2 }\n',
        {},
    )
    assert LocalState().share(loaded) is loaded
    shared = LocalState(workers=4).share(loaded)
    route_limit = shared.routes[0].rate_limit
    assert route_limit is not None
    assert (route_limit.rate, route_limit.capacity) == (2.5, 2.5)
    auth = shared.auth["a"]
    assert auth.rate_limit is not None
    assert auth.token_rate is not None
    assert (auth.rate_limit.rate, auth.rate_limit.capacity) == (7.5, 1.0)
    assert (auth.token_rate.rate, auth.token_rate.per) == (25, 60)
    client_limit = shared.clients["c"].rate_limit
    assert client_limit is not None
    assert (client_limit.rate, client_limit.per, client_limit.capacity) == (1.0, 2.0, 1.0)
