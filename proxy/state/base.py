"""The Protocols between the policy and the state it keeps (the token store's are in
tokens.py).

Each is small enough to be implemented over a shared store later: capacity is taken one
slot at a time (a fleet backend hands out slots from leases), a pause only ever grows (a
fleet backend extends it atomically), and nothing here waits on another process unless a
method says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, Protocol

from ..config import AuthConfig, Config, RateLimitConfig
from .redis_link import CallStats
from .tokens import TokenStore

# The longest an upstream can pause a route: a Retry-After of a year is a bug on its side
# and must not take the route down until a restart.
MAX_PAUSE: Final = 600.0


class Capacity(Protocol):
    """The slots of one rate limit: ``burst`` at most at once, refilled at ``rate/per``.

    Only the limit's dispatcher and its fast path call it; fairness among waiters is the
    limit's own business (proxy/limits.py), not the capacity's."""

    def has_capacity(self) -> bool:
        """True when :meth:`acquire` would return now, without suspending."""
        ...

    async def acquire(self) -> None:
        """Take one slot, waiting until one is free."""
        ...

    async def close(self) -> None:
        """The limit is gone (shutdown, or a reload that changed it): stop whatever keeps
        slots coming (a shared backend's lease requests); return what is unspent if it can."""
        ...


class RoutePause(Protocol):
    """A route-wide pause the upstream asked for: no request goes upstream before it ends.

    Pauses only grow: a shorter one asked for while a longer one runs changes nothing, and
    none lasts more than MAX_PAUSE."""

    @property
    def paused_seconds(self) -> float:
        """Seconds paused in all, for metrics."""
        ...

    def pause(self, seconds: float, reason: str) -> None:
        """Pause for ``seconds`` from now (``reason`` is logged when a pause begins)."""
        ...

    def remaining(self) -> float:
        """Seconds until the pause ends; 0 when there is none."""
        ...

    def status(self) -> dict[str, Any]:
        """For /-/status: paused or not, the seconds left and the total."""
        ...


class State(Protocol):
    """Where limits, pauses and tokens keep what processes will share; one per process,
    kept across reloads, made by the composition root from the config."""

    @property
    def backend(self) -> str:
        """The backend's name, as the config spells it ("local")."""
        ...

    def capacity(self, limit: str, config: RateLimitConfig) -> Capacity:
        """The slots of the limit named ``limit`` (e.g. "route /travtus")."""
        ...

    def share(self, config: Config) -> Config:
        """The part of every limit (rate limits and token_rate) this process enforces: the
        whole of it when the state is shared by the processes, 1/N of it in each of N
        workers that keep their own."""
        ...

    def route_pause(self, route: str, upstream: str) -> RoutePause:
        """The pause of the route with prefix ``route`` in front of ``upstream`` (its URL):
        a route moved to another upstream starts unpaused."""
        ...

    async def prepare(self, auths: Iterable[AuthConfig]) -> None:
        """Do off the event loop what :meth:`token_store` will need for ``auths`` and is
        slow (a shared backend stretches each credential's secrets into its key): called
        before a reload builds on them, so requests in flight do not wait on it."""
        ...

    def token_store(self, auth: AuthConfig) -> TokenStore:
        """Where the token of the auth table ``auth`` is kept, with its token-request window
        (``token_rate``), its failures and the lock of its single fetch."""
        ...

    def health(self) -> dict[str, Any]:
        """For /-/status: the backend and whether it is usable."""
        ...

    def samples(self) -> Iterable[tuple[str, tuple[str, ...], float]]:
        """The backend's metrics now: (family, label values, value), families as
        observe/state_metrics.py declares them."""
        ...

    def call_stats(self) -> CallStats | None:
        """The backend's calls by operation, outcome and latency; None without calls."""
        ...

    async def start(self) -> None:
        """Connect, before the proxy serves; what the state handed out works from then on."""
        ...

    async def close(self) -> None:
        """Release what the backend holds (connections, tasks)."""
        ...
