"""Everything a running sandbox remembers, in one object stored on the app.

Nothing here lives at module level: two sandboxes in one process (as tests run them) share
nothing, and ``reset`` returns one to exactly what its settings describe.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from .limits import AdmissionWindow, TokenBucket
from .log import RequestLog
from .settings import TRAVELYZER_WINDOW, SandboxSettings
from .tokens import RefreshBook, TokenBook

Clock = Callable[[], float]

# Travtus keeps this many posted messages for GET /travtus/messages/.
MESSAGES_KEPT: Final = 1000


@dataclass(slots=True)
class Fault:
    """An injected answer for the next ``count`` requests to ``target`` (-1: until cleared).

    ``status`` 0 closes the connection without answering. ``body`` ``None`` means the vendor's
    own error format for ``status``.
    """

    target: str
    status: int
    count: int
    retry_after: float | None = None
    body: Any = None

    def describe(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "status": self.status,
            "count": self.count,
            "retry_after": self.retry_after,
            "body": self.body,
        }


class Faults:
    """Injected faults per target, used up in the order they were added."""

    __slots__ = ("_queues",)

    def __init__(self) -> None:
        self._queues: dict[str, deque[Fault]] = {}

    def add(self, fault: Fault) -> None:
        self._queues.setdefault(fault.target, deque()).append(fault)

    def take(self, target: str) -> Fault | None:
        """The fault that answers this request to ``target``, if any; spends one use."""
        queue = self._queues.get(target)
        if not queue:
            return None
        fault = queue[0]
        if fault.count > 0:
            fault.count -= 1
            if fault.count == 0:
                queue.popleft()
        return fault

    def clear(self) -> None:
        self._queues.clear()

    def describe(self) -> list[dict[str, Any]]:
        return [fault.describe() for queue in self._queues.values() for fault in queue]


class SandboxState:
    """The sandbox's tokens, limits, knobs and log; built from settings, reset to them."""

    __slots__ = (
        "buckets",
        "clock",
        "faults",
        "latency",
        "lifetimes",
        "log",
        "messages",
        "refresh",
        "revoked",
        "settings",
        "tokens",
        "windows",
    )

    def __init__(self, settings: SandboxSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        # One key per sandbox: tokens of another sandbox (or a restarted one) fail the signature.
        self.tokens = TokenBook(secrets.token_bytes(32))
        self.refresh = RefreshBook(self.tokens)
        self.log = RequestLog(settings.log_limit)
        self.faults = Faults()
        self.latency: dict[str, float] = {}
        self.lifetimes = settings.lifetimes()
        self.revoked: dict[str, int] = {}
        self.buckets: dict[str, TokenBucket] = {}
        self.windows: dict[str, AdmissionWindow] = {}
        self.messages: deque[dict[str, Any]] = deque(maxlen=MESSAGES_KEPT)

    def reset(self) -> None:
        """Back to the construction settings: no tokens, log, faults, latency or revocations."""
        self.tokens.clear()
        self.refresh.clear()
        self.log.clear()
        self.faults.clear()
        self.latency.clear()
        self.lifetimes = self.settings.lifetimes()
        self.revoked.clear()
        self.buckets.clear()
        self.windows.clear()
        self.messages.clear()

    def travtus_bucket(self, client_id: str, now: float) -> TokenBucket:
        """The Travtus throttle of ``client_id`` (one per client, as API Gateway keys it)."""
        bucket = self.buckets.get(client_id)
        if bucket is None:
            settings = self.settings
            bucket = TokenBucket(settings.travtus_burst, settings.travtus_rate, now)
            self.buckets[client_id] = bucket
        return bucket

    def travelyzer_window(self, api_key: str) -> AdmissionWindow:
        """The token-request window of ``api_key``."""
        window = self.windows.get(api_key)
        if window is None:
            limit = self.settings.travelyzer_token_per_minute
            window = AdmissionWindow(limit, TRAVELYZER_WINDOW)
            self.windows[api_key] = window
        return window

    def knobs(self) -> dict[str, Any]:
        """The control state as the control endpoint reports it."""
        return {
            "token_lifetime": dict(self.lifetimes),
            "inject": self.faults.describe(),
            "latency": dict(self.latency),
            "revoked": dict(self.revoked),
            "log_entries": len(self.log),
        }


STATE: Final = web.AppKey("sandbox_state", SandboxState)
