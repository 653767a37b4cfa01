"""Request accounting: the access line and the request metrics of each request answered.

Whoever answers a request accounts for it here: the forwarding pipeline, and the proxy
itself for what it answers before routing (its ``/-/`` endpoints, a refused source or
method). The server's own refusals, which have no request to speak of, are only counted.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from ..http.server import Reply, Request
from .logs import AccessLog
from .metrics import Metrics, RouteMetrics


class Exchanged(Protocol):
    """What reaching the upstream took, as far as it got: the access line and the route's
    metrics report these (``upstream.ExchangeRecord`` is one)."""

    @property
    def attempts(self) -> int: ...
    @property
    def limiter_wait(self) -> float: ...
    @property
    def retries(self) -> int: ...
    @property
    def token_renewals(self) -> int: ...
    @property
    def upstream_seconds(self) -> float: ...
    @property
    def status(self) -> int | None: ...


class Stats:
    """What one request cost, for its access-log line and metrics."""

    __slots__ = ("bytes_out", "client", "cut", "exchange", "request_id", "route", "started")

    def __init__(self, request_id: str) -> None:
        self.started = time.perf_counter()
        self.request_id = request_id
        self.route: str | None = None
        self.client: str | None = None
        self.exchange: Exchanged | None = None
        self.bytes_out = 0  # body bytes written to the client
        # Why the answer was broken off, if it was: "client" (hung up, status 499),
        # "shutdown" (the grace ran out), "upstream" (its answer broke off), "error" (a bug).
        self.cut: str | None = None

    def answered(self, request: Request, reply: Reply) -> Reply:
        """``reply``, the proxy's own answer, counted as sent (a HEAD's body is not)."""
        if request.method != "HEAD":
            self.bytes_out += len(reply.body)
        return reply


class Accounting:
    """Writes one access line per request and counts it; ``routes`` holds the metric
    children of the routes whose requests it accounts for (none for the proxy's own)."""

    __slots__ = ("_access_log", "_metrics", "_routes")

    def __init__(
        self,
        metrics: Metrics,
        access_log: AccessLog | None,
        routes: Mapping[str, RouteMetrics] | None = None,
    ) -> None:
        self._metrics = metrics
        self._access_log = access_log
        self._routes: Mapping[str, RouteMetrics] = routes or {}

    def account(
        self,
        request: Request,
        stats: Stats,
        status: int,
        local: str | None = None,
        *,
        logged: bool = True,
    ) -> None:
        """One access line (unless not ``logged``) and the request metrics; ``local``
        labels a request the proxy answered itself before routing (``/-/``, a refused
        source)."""
        total = time.perf_counter() - stats.started
        route = stats.route or local or "none"
        self._metrics.count_request(route, request.method, status)
        result = stats.exchange
        if stats.route is not None:
            metrics = self._routes[stats.route]
            metrics.duration.observe(total)
            if result is not None and result.attempts:
                metrics.upstream.observe(result.upstream_seconds)
                metrics.attempts.inc(result.attempts)
                if result.retries:
                    metrics.retries.inc(result.retries)
                metrics.limiter_wait.observe(result.limiter_wait)
        access = self._access_log
        if access is None or not logged:
            return
        fields: dict[str, Any] = {
            "request_id": stats.request_id,
            "remote": request.remote,
            "client": stats.client,
            "method": request.method,
            # No query string: queries can hold personal data.
            "path": request.raw_path.partition("?")[0],
            "route": stats.route or local,
            "status": status,
            "upstream_status": result.status if result is not None else None,
            "attempts": result.attempts if result is not None else 0,
            "retries_429": result.retries if result is not None else 0,
            "token_refreshes": result.token_renewals if result is not None else 0,
            "limiter_wait_ms": (round(result.limiter_wait * 1000, 2) if result is not None else 0),
            # null unless something was sent upstream
            "upstream_ms": (
                round(result.upstream_seconds * 1000, 2)
                if result is not None and result.attempts
                else None
            ),
            "total_ms": round(total * 1000, 2),
            "bytes_in": request.content.total_bytes,
            "bytes_out": stats.bytes_out,
        }
        if stats.cut is not None:
            fields["cut"] = stats.cut
        access(fields)
