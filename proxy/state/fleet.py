"""What every part of the redis backend shares: the link, the key names, who this process
is, and how big the fleet was when Redis last told us.

The parts (lease.py for limits, redis_tokens.py for tokens, redis.py for pauses and the
fleet itself) each hold this one object; nothing in it is global.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from ..clock import MONOTONIC, Clock
from .redis_link import RedisLink


@dataclass(slots=True)
class Fleet:
    """One process's view of the fleet it belongs to (the proxies with the same Redis and
    ``prefix``)."""

    link: RedisLink
    prefix: str  # every key starts with it: "authproxy:"
    # None ("auto"): divide by the fleet size last seen; N: by N, whatever was seen.
    fallback_share: int | None = None
    # ``on_failure = "closed"``: while Redis is away, shared limits refuse (503) instead
    # of falling back to this process's share.
    closed: bool = False
    clock: Clock = MONOTONIC
    wall: Callable[[], float] = time.time
    # Unique per process start: a lock's owner, a heartbeat's member.
    owner: str = field(
        default_factory=lambda: f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
    )
    seen: int = 1  # processes with a live heartbeat, as last read from Redis

    def key(self, kind: str, name: str) -> str:
        """A key of ``kind`` ("lim", "tok", ...) for ``name``; braces keep every key of one
        name in one Redis Cluster slot, so a script may touch them together."""
        return f"{self.prefix}{kind}:{{{name}}}"

    @property
    def channel(self) -> str:
        """The pub/sub channel of hints (a token committed, a route paused)."""
        return f"{self.prefix}events"

    def share(self) -> int:
        """How many processes divide a limit between them while Redis is away."""
        return self.fallback_share or max(1, self.seen)
