"""Route pauses shared by the fleet: a 429 (or 503) with Retry-After seen by one process
keeps every process off the route.

The pause is a key in Redis whose TTL is the time left (``pause.lua`` only ever extends
it). Peers learn of it two ways: a pub/sub hint at once, and a poll of every pause key
(POLL_INTERVAL), so a lost message delays a peer's pause by at most one poll, and a pause
holds however the hints fare. Each process keeps enforcing its own pause locally, from
the moment it sees the answer, as with the local backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from typing import Any, Final

import structlog

from .base import MAX_PAUSE
from .fleet import Fleet
from .local import LocalPause
from .redis_link import StateUnavailableError

log = structlog.get_logger("proxy.state")

POLL_INTERVAL: Final = 0.25  # seconds between two reads of every pause key
# A peer's pause reaches us after a one-way delay nobody measured: hold it this much longer.
PEER_MARGIN: Final = 0.05

# KEYS[1] the pause; ARGV[1] ms, ARGV[2] channel, ARGV[3] owner. Extend-only; returns the
# ms left. PTTL is -2 for a missing key, so any pause extends one that is gone.
PAUSE_LUA: Final = """
local ms = tonumber(ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if ms > left then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
  redis.call('PUBLISH', ARGV[2], 'pause ' .. KEYS[1] .. ' ' .. ms .. ' ' .. ARGV[3])
  return ms
end
return left
"""


def pause_key(fleet: Fleet, route: str, upstream: str) -> str:
    """The key of a route's pause: by route and upstream (a route moved to another vendor
    starts unpaused, as locally); hashed, since an upstream URL may carry a base path."""
    digest = hashlib.sha256(f"{route}\0{upstream}".encode()).hexdigest()[:32]
    return fleet.key("pause", digest)


class SharedPause:
    """A RoutePause that tells the fleet and hears from it."""

    __slots__ = ("_fleet", "_local", "_tasks", "key", "local_events", "peer_events")

    def __init__(self, fleet: Fleet, route: str, upstream: str) -> None:
        self._fleet = fleet
        self._local = LocalPause(route, fleet.clock)
        self._tasks: set[asyncio.Task[None]] = set()
        self.key = pause_key(fleet, route, upstream)
        self.local_events = 0  # pauses this process saw in an answer
        self.peer_events = 0  # pauses a peer saw (hint or poll) that extended ours

    @property
    def route(self) -> str:
        return self._local.route

    @property
    def paused_seconds(self) -> float:
        return self._local.paused_seconds

    def pause(self, seconds: float, reason: str) -> None:
        seconds = min(seconds, MAX_PAUSE)
        if seconds <= self._local.remaining():
            return  # no longer than the pause we hold: nothing new to tell anyone
        self.local_events += 1
        self._local.pause(seconds, reason)
        # Told in the background: the request that saw the 429 must not wait on Redis.
        task = asyncio.get_running_loop().create_task(self._announce(seconds))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self, seconds: float) -> None:
        fleet = self._fleet
        ms = max(1, round(seconds * 1000))
        # Redis away: this process holds its pause anyway; only the peers miss it.
        with contextlib.suppress(StateUnavailableError):
            await fleet.link.call(
                lambda r: r.eval(PAUSE_LUA, 1, self.key, ms, fleet.channel, fleet.owner),
                name="pause",
            )

    def heard(self, seconds: float) -> None:
        """A peer's pause with ``seconds`` left, from a hint or a poll."""
        seconds = min(seconds + PEER_MARGIN, MAX_PAUSE)
        if seconds <= self._local.remaining() + PEER_MARGIN:
            return
        self.peer_events += 1
        self._local.pause(seconds, "peer")

    def remaining(self) -> float:
        return self._local.remaining()

    def status(self) -> dict[str, Any]:
        return self._local.status()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def poll(fleet: Fleet, pauses: list[SharedPause]) -> None:
    """Read every pause key once and apply what peers set; one round trip for all."""
    if not pauses:
        return
    keys = [p.key for p in pauses]

    async def read(r: Any) -> list[int]:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
        left: list[int] = await pipe.execute()
        return left

    left = await fleet.link.call(read, name="pause_poll")
    for pause, ms in zip(pauses, left, strict=True):
        if ms > 0:
            pause.heard(ms / 1000)
