"""The link to the fleet's Redis (proxy/state/redis_link.py) against a real redis-server:
calls bounded by the timeout, a breaker that stops calling a Redis that is away and lets
one probe through to find it back, and a URL whose password is shown nowhere."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis import asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeoutError
from structlog.testing import capture_logs

from proxy.state.redis_link import (
    BREAKER_FAILURES,
    BREAKER_PROBE,
    RedisLink,
    StateUnavailableError,
    shown_url,
)

from .fakeclock import Clock
from .redisserver import PASSWORD, RedisServer

TIMEOUT = 0.2


async def _set_get(redis: aioredis.Redis) -> bytes | None:
    await redis.set("authproxy:test", b"v")
    value = await redis.get("authproxy:test")
    return value if isinstance(value, bytes) else None


async def _ping(redis: aioredis.Redis) -> bool:
    return bool(await redis.ping())


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw-secret@h:6379/0", "redis://***@h:6379/0"),
        ("rediss://proxy:pw-secret@h:6380", "rediss://***@h:6380"),
        ("rediss://h:6380/0?ssl_password=pw-secret", "rediss://h:6380/0?ssl_password=***"),
        (
            "unix:///run/redis.sock?password=pw-secret&db=1",
            "unix:///run/redis.sock?password=***&db=1",
        ),
    ],
)
def test_the_url_is_shown_without_its_password(url: str, shown: str) -> None:
    """Logs, check and status show the URL with user and password blanked."""
    assert shown_url(url) == shown
    assert "pw-secret" not in shown_url(url)


async def test_calls_reach_redis_and_health_hides_the_password(redis_server: RedisServer) -> None:
    """A call runs on the real server; health says up and shows no password."""
    link = RedisLink(redis_server.url, TIMEOUT)
    try:
        assert await link.call(_set_get) == b"v"
        assert link.health() == {"url": f"redis://***@127.0.0.1:{redis_server.port}/0", "up": True}
        assert PASSWORD not in repr(link.health())
    finally:
        await link.close()


async def test_a_silent_redis_opens_the_breaker_and_a_probe_finds_it_back(
    redis_server: RedisServer,
) -> None:
    """Against a stopped (SIGSTOP) server each call fails within the timeout; after
    BREAKER_FAILURES of them calls fail at once without waiting; once it answers again, a
    probe after BREAKER_PROBE closes the breaker. One down line, one up line."""
    clock = Clock()
    link = RedisLink(redis_server.url, TIMEOUT, clock)
    try:
        assert await link.call(_ping)
        redis_server.pause()
        with capture_logs() as lines:
            for _ in range(BREAKER_FAILURES):
                started = time.monotonic()
                with pytest.raises(StateUnavailableError) as failed:
                    await link.call(_ping)
                assert failed.value.reason == "timeout"
                assert time.monotonic() - started < TIMEOUT * 5
            assert link.health()["up"] is False
            started = time.monotonic()
            with pytest.raises(StateUnavailableError) as refused:
                await link.call(_ping)
            assert refused.value.reason == "breaker_open"
            assert time.monotonic() - started < TIMEOUT / 2  # no network, no wait
            redis_server.resume()
            with pytest.raises(StateUnavailableError):
                await link.call(_ping)  # still open: the probe waits for BREAKER_PROBE
            clock.now += BREAKER_PROBE
            assert await link.call(_ping)
            assert link.up
        events = [line["event"] for line in lines]
        assert events == ["state_backend_down", "state_backend_up"]
        assert all(PASSWORD not in repr(line) for line in lines)
    finally:
        redis_server.resume()
        await link.close()


async def test_a_restarted_redis_is_found_again(redis_server: RedisServer) -> None:
    """A server that went away refuses connections (reason "connection"); after it is
    back on the same port the next probe reaches it."""
    clock = Clock()
    link = RedisLink(redis_server.url, TIMEOUT, clock)
    try:
        assert await link.call(_ping)
        redis_server.stop()
        for _ in range(BREAKER_FAILURES):
            with pytest.raises(StateUnavailableError) as failed:
                await link.call(_ping)
            assert failed.value.reason == "connection"
            assert PASSWORD not in str(failed.value)
        assert link.health()["up"] is False
        redis_server.start()
        clock.now += BREAKER_PROBE
        assert await link.call(_set_get) == b"v"
        assert link.up
    finally:
        await link.close()


async def test_a_wrong_password_is_an_error_that_does_not_show_it(
    redis_server: RedisServer,
) -> None:
    """Redis refusing our password is a failure like any other, and the message the proxy
    keeps holds neither password."""
    url = redis_server.url.replace(PASSWORD, "wrong-pass-0123")
    link = RedisLink(url, TIMEOUT)
    try:
        with pytest.raises(StateUnavailableError) as failed:
            await link.call(_ping)
        assert failed.value.reason in ("redis_error", "connection")
        assert "wrong-pass-0123" not in str(failed.value)
        assert "wrong-pass-0123" not in link.shown_url
    finally:
        await link.close()


async def test_a_cancelled_call_stays_cancelled_when_redis_py_reports_a_timeout(
    redis_server: RedisServer,
) -> None:
    """Cancelling a task in a call cancels it, even when the client turns the cancellation
    into its own timeout (redis-py does when it meets its read timeout): a background loop
    that took it for a slow Redis went on forever and held up shutdown."""
    link = RedisLink(redis_server.url, 2.0)
    started = asyncio.Event()

    async def blocked_read(redis: aioredis.Redis) -> object:
        started.set()
        try:
            return await redis.blpop(["authproxy:nothing"], timeout=1)
        except asyncio.CancelledError:
            raise RedisTimeoutError("Timeout reading from socket") from None

    try:
        call = asyncio.ensure_future(link.call(blocked_read))
        await started.wait()
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert call.cancelled()
    finally:
        await link.close()
