"""The fleet's state in Redis: one token per credential, one global limit, one pause, for
every process with the same ``url`` and ``key_prefix``.

Redis stays off each request's path: limits spend leased slots held in memory
(lease.py), requests read the token this process holds (redis_tokens.py), pauses are
enforced locally once heard of (pauses.py). Redis sees lease calls, one token fetch per
credential per lifetime, a write per pause, a heartbeat every HEARTBEAT seconds and a
poll of the pause keys. While it is away each part falls back to this process's share
(``1/fallback_share``) and says so; none waits longer than the link's bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
from collections.abc import Iterable, Iterator
from typing import Any, Final

import structlog
from yarl import URL

from ..clock import MONOTONIC, Clock
from ..config import AuthConfig, Config, RateLimitConfig, StateConfig
from .base import Capacity, RoutePause
from .fleet import Fleet
from .lease import LeaseCapacity
from .local import LocalState, local_bucket
from .pauses import POLL_INTERVAL, SharedPause, poll
from .redis_link import CallStats, RedisLink, StateUnavailableError
from .redis_tokens import RedisTokenStore
from .sealing import Sealer
from .tokens import TokenStore

log = structlog.get_logger("proxy.state")

HEARTBEAT: Final = 2.0  # seconds between two heartbeats of a process
# A process missing this long (three beats and a bit) no longer counts in the fleet.
STALE: Final = 6.5
DOWN_REMINDER: Final = 60.0  # seconds between two state_backend_down lines of one outage
RECONNECT: Final = 1.0  # seconds before the pub/sub listener tries again
# RedisTokenStore's counters, as proxy_token_shared_total's outcomes.
TOKEN_OUTCOMES: Final = (
    "fetched",
    "adopted",
    "waited",
    "stale",
    "lock_taken",
    "backoff",
    "seal_failures",
    "local",
)

# KEYS[1] the fleet's zset; ARGV[1] owner, ARGV[2] stale ms. Returns the processes alive.
HEARTBEAT_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - stale)
redis.call('PEXPIRE', KEYS[1], stale * 2)
return redis.call('ZCARD', KEYS[1])
"""


class RedisState:
    """The redis backend: what processes of one fleet share."""

    def __init__(self, config: StateConfig, workers: int = 1, clock: Clock = MONOTONIC) -> None:
        if config.url is None:  # the loader requires it with this backend
            raise ValueError("state.url is required with backend = redis")
        self._config = config
        url = URL(config.url.reveal())
        self._plaintext = url.scheme == "redis" and not _is_loopback(url.host)
        link = RedisLink(config.url.reveal(), config.timeout, clock)
        self.fleet = Fleet(
            link,
            config.key_prefix,
            fallback_share=config.fallback_share,
            closed=config.on_failure == "closed",
            clock=clock,
        )
        self._local = LocalState(clock, workers)  # what scope = "process" limits get
        self._key = config.encryption_key
        self._sealers: dict[str, tuple[AuthConfig, Sealer]] = {}  # by auth name
        self._pauses: dict[str, SharedPause] = {}
        self._stores: dict[str, RedisTokenStore] = {}  # by auth table: the latest one's
        self._capacities: dict[str, LeaseCapacity] = {}  # by limit: the latest one's
        self._tasks: list[asyncio.Task[None]] = []
        self._reminded = 0.0
        self._closing = False

    @property
    def backend(self) -> str:
        return "redis"

    def share(self, config: Config) -> Config:
        """Global limits are the fleet's whole limit; ``scope = "process"`` ones are kept as
        the local backend keeps them (divided among ``--workers``). ``token_rate`` is held
        fleet-wide by the token store."""
        local = self._local.share(config)

        def pick(mine: RateLimitConfig | None, divided: RateLimitConfig | None) -> Any:
            return divided if mine is not None and mine.scope == "process" else mine

        routes = tuple(
            dataclasses.replace(r, rate_limit=pick(r.rate_limit, d.rate_limit))
            for r, d in zip(config.routes, local.routes, strict=True)
        )
        auth = {
            name: dataclasses.replace(a, rate_limit=pick(a.rate_limit, local.auth[name].rate_limit))
            for name, a in config.auth.items()
        }
        clients = {
            name: dataclasses.replace(
                c, rate_limit=pick(c.rate_limit, local.clients[name].rate_limit)
            )
            for name, c in config.clients.items()
        }
        return dataclasses.replace(config, routes=routes, auth=auth, clients=clients)

    def capacity(self, limit: str, config: RateLimitConfig) -> Capacity:
        if config.scope == "process":
            return local_bucket(config)
        capacity = LeaseCapacity(self.fleet, limit, config, self._config.lease)
        self._capacities[limit] = capacity
        return capacity

    def route_pause(self, route: str, upstream: str) -> RoutePause:
        pause = SharedPause(self.fleet, route, upstream)
        self._pauses[pause.key] = pause  # a route rebuilt for a new upstream replaces it
        return pause

    async def prepare(self, auths: Iterable[AuthConfig]) -> None:
        # Deriving a sealing key stretches the secrets (scrypt, ~70 ms of CPU): in a
        # thread, so a reload that changes a table does not stall requests in flight.
        for auth in auths:
            if self._sealers.get(auth.name, (None,))[0] != auth:
                sealer = await asyncio.to_thread(Sealer.for_credential, auth, self._key)
                self._sealers[auth.name] = (auth, sealer)

    def token_store(self, auth: AuthConfig) -> TokenStore:
        made = self._sealers.get(auth.name)
        if made is not None and made[0] == auth:
            sealer = made[1]
        else:  # at start, before anything is served: derived here
            sealer = Sealer.for_credential(auth, self._key)
            self._sealers[auth.name] = (auth, sealer)
        store = RedisTokenStore(self.fleet, auth, sealer)
        self._stores[auth.name] = store
        return store

    # -- the fleet ---------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        link = self.fleet.link
        return {
            "backend": "redis",
            "url": link.shown_url,
            "key_prefix": self.fleet.prefix,
            "up": link.up,
            "fleet_size": self.fleet.seen,
            "fallback": not link.up,
            "on_failure": self._config.on_failure,
            "fallback_share": self.fleet.share(),
        }

    def samples(self) -> Iterator[tuple[str, tuple[str, ...], float]]:
        """(family, label values, value) for the state's metrics (observe/state_metrics.py)."""
        link = self.fleet.link
        yield "proxy_state_up", (), float(link.up)
        yield "proxy_fleet_processes", (), float(self.fleet.seen)
        for (op, outcome), count in link.calls.outcomes.items():
            yield "proxy_state_calls_total", (op, outcome), float(count)
        for name, capacity in self._capacities.items():
            yield "proxy_state_fallback", (name,), float(capacity.fallback)
            leased = (
                ("granted", capacity.tokens_granted),
                ("spent", capacity.tokens_spent),
                ("expired", capacity.tokens_expired),
            )
            for outcome, count in leased:
                yield "proxy_lease_tokens_total", (name, outcome), float(count)
        for name, store in self._stores.items():
            for outcome in TOKEN_OUTCOMES:
                count = getattr(store, outcome)
                yield "proxy_token_shared_total", (name, outcome), float(count)
        for pause in self._pauses.values():
            yield "proxy_route_pause_events_total", (pause.route, "local"), pause.local_events
            yield "proxy_route_pause_events_total", (pause.route, "peer"), pause.peer_events

    def call_stats(self) -> CallStats:
        return self.fleet.link.calls

    async def start(self) -> None:
        """Say hello to the fleet, then keep in touch in the background. Redis away at
        start is not fatal: the proxy serves on its fallback shares until it answers."""
        self.warn_plaintext()
        await self._beat()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._heartbeats()),
            loop.create_task(self._listen()),
            loop.create_task(self._poll_pauses()),
        ]

    def warn_plaintext(self) -> None:
        """Tokens (sealed, but still) and limits crossing a network in the clear deserve a
        line at start."""
        if self._plaintext:
            log.warning(
                "state_backend_plaintext",
                url=self.fleet.link.shown_url,
                hint="use rediss:// between machines: tokens and limits cross the network",
            )

    async def _beat(self) -> None:
        fleet = self.fleet
        try:
            seen = await fleet.link.call(
                lambda r: r.eval(
                    HEARTBEAT_LUA, 1, fleet.key("fleet", "members"), fleet.owner, int(STALE * 1000)
                ),
                name="heartbeat",
            )
        except StateUnavailableError:
            down = fleet.link.down_for()
            if down is not None and down - self._reminded >= DOWN_REMINDER:
                self._reminded = down
                log.error(
                    "state_backend_down", url=fleet.link.shown_url, down_s=round(down), still=True
                )
            return
        self._reminded = 0.0
        fleet.seen = max(1, int(seen))

    async def _heartbeats(self) -> None:
        while not self._closing:
            await asyncio.sleep(HEARTBEAT)
            await self._beat()

    async def _poll_pauses(self) -> None:
        while not self._closing:
            await asyncio.sleep(POLL_INTERVAL)
            with contextlib.suppress(StateUnavailableError):
                await poll(self.fleet, list(self._pauses.values()))

    async def _listen(self) -> None:
        """Apply the fleet's hints (a token committed, a route paused) as they come; after
        a reconnect, read everything once, since what was said meanwhile is lost."""
        fleet = self.fleet
        while not self._closing:
            pubsub = fleet.link.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(fleet.channel)
                self._resync()
                # Checked between messages too: redis-py can swallow a cancellation that
                # meets its own read timeout (asyncio.timeout in 3.11), so close() also
                # says so with this flag.
                while not self._closing:
                    message = await pubsub.get_message(timeout=HEARTBEAT)
                    if message is not None:
                        self._hint(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(RECONNECT)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _hint(self, data: bytes | str) -> None:
        text = data.decode() if isinstance(data, bytes) else data
        parts = text.split(" ")
        if parts[0] == "pause" and len(parts) == 4 and parts[3] != self.fleet.owner:
            pause = self._pauses.get(parts[1])
            if pause is not None and parts[2].isdigit():
                pause.heard(int(parts[2]) / 1000)
        elif parts[0] == "tok" and len(parts) == 3 and parts[2].isdigit():
            for store in self._stores.values():  # tables on one credential share its cred-id
                if store.cred_id == parts[1]:
                    store.hint(int(parts[2]))

    def _resync(self) -> None:
        for store in self._stores.values():
            store.hint(0)

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pause in self._pauses.values():
            await pause.close()
        for store in self._stores.values():
            await store.close()
        fleet = self.fleet
        with contextlib.suppress(StateUnavailableError):
            # Leave the fleet at once: the others' fallback share counts the living.
            await fleet.link.call(
                lambda r: r.zrem(fleet.key("fleet", "members"), fleet.owner), name="heartbeat"
            )
        await fleet.link.close()


def _is_loopback(host: str | None) -> bool:
    if host is None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
