"""Prometheus metrics: one registry per process, children bound once per route and auth.

Label values are route prefixes, auth table names, methods and status classes: never a
path, a client key or anything a caller controls beyond the method.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..state.base import State
from .fast import Buckets, CounterFamily, FastCollector, GaugeFamily, HistogramFamily, Value
from .process_metrics import BuildCollector, ProcessCollector
from .state_metrics import StateCollector

LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
AGE_BUCKETS: Final = (1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600, 7200, 21600, 86400)
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# (name, seconds to expiry or None) per auth; (route, seconds paused in all, learned rate
# or None) per route.
TokenStates = Callable[[], Iterable[tuple[str, float | None]]]
RoutePauses = Callable[[], Iterable[tuple[str, float, float | None]]]


# Token-fetch outcomes that may become label values: RFC 6749 5.2 error codes and ours.
_FETCH_OUTCOMES: Final = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "temporarily_unavailable",
        "slow_down",
        "unauthorized",
        "forbidden",
        "too_many_requests",
        "bad_request",
        "connection_error",
        "expired_on_arrival",
        "internal_error",
        "invalid_response",
        "timeout",
        "token_rate",
    }
)
_HTTP_STATUS: Final = re.compile(r"http_[1-5]\d\d")


class Metrics:
    """Every metric the proxy exports, on a registry of its own (no global state)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # The per-request families: plain numbers, no lock (see fast.py).
        self.requests = CounterFamily(
            "proxy_requests_total",
            "Requests answered, by route, method and status class.",
            ["route", "method", "status_class"],
        )
        self.duration = HistogramFamily(
            "proxy_request_duration_seconds",
            "Time from request to end of response.",
            ["route"],
            LATENCY_BUCKETS,
        )
        self.upstream_duration = HistogramFamily(
            "proxy_upstream_duration_seconds",
            "Time from first attempt to upstream headers.",
            ["route"],
            LATENCY_BUCKETS,
        )
        self.attempts = CounterFamily(
            "proxy_upstream_attempts_total", "Requests sent upstream, retries included.", ["route"]
        )
        self.retries = CounterFamily(
            "proxy_upstream_retries_total", "Attempts repeated after a 429 (or 503).", ["route"]
        )
        self.limiter_wait = HistogramFamily(
            "proxy_limiter_wait_seconds",
            "Time requests waited for rate-limit slots.",
            ["route"],
            LATENCY_BUCKETS,
        )
        self.limiter_rejections = CounterFamily(
            "proxy_limiter_rejections_total", "Requests refused with 429 rate_limited.", ["route"]
        )
        in_flight = GaugeFamily("proxy_in_flight_requests", "Requests being handled now.", [])
        self.in_flight = in_flight.labels()
        self.token_age = HistogramFamily(
            "proxy_token_age_seconds",
            "Age of the token when a request used it.",
            ["auth"],
            AGE_BUCKETS,
        )
        r.register(
            FastCollector(
                [
                    self.requests,
                    self.duration,
                    self.upstream_duration,
                    self.attempts,
                    self.retries,
                    self.limiter_wait,
                    self.limiter_rejections,
                    in_flight,
                    self.token_age,
                ]
            )
        )
        self.token_fetches = Counter(
            "proxy_token_fetches_total",
            "Token requests, by auth and outcome.",
            ["auth", "outcome"],
            registry=r,
        )
        self.token_fetch_duration = Histogram(
            "proxy_token_fetch_duration_seconds",
            "Token request latency.",
            ["auth"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.refresh_lead = Histogram(
            "proxy_token_refresh_lead_seconds",
            "Seconds before expiry each renewal ran.",
            ["auth"],
            buckets=AGE_BUCKETS,
            registry=r,
        )
        self.single_flight_waits = Counter(
            "proxy_token_single_flight_waits_total",
            "Requests that waited on a token fetch another request started.",
            ["auth"],
            registry=r,
        )
        self.fresh_rejections = Counter(
            "proxy_token_fresh_rejections_total",
            "Upstream 401s for a token fetched less than a second before.",
            ["auth"],
            registry=r,
        )
        r.register(ProcessCollector())
        r.register(BuildCollector())
        self._status: dict[tuple[str, str, str], Value] = {}
        self._ages: dict[str, Buckets] = {}
        self._sources: list[tuple[TokenStates, RoutePauses]] = []
        r.register(_LiveState(self._sources))
        self._state: list[State] = []
        r.register(
            StateCollector(
                lambda: (s for state in self._state for s in state.samples()),
                lambda: self._state[0].call_stats() if self._state else None,
            )
        )

    def watch(self, tokens: TokenStates, pauses: RoutePauses) -> None:
        """Report token expiry and route pauses from these callbacks at each scrape."""
        self._sources[:] = [(tokens, pauses)]

    def watch_state(self, state: State) -> None:
        """Report the state backend's metrics (state_metrics.py) at each scrape."""
        self._state[:] = [state]

    def count_request(self, route: str, method: str, status: int) -> None:
        method = method if method in _METHODS else "other"  # callers must not mint labels
        key = (route, method, f"{status // 100}xx")
        child = self._status.get(key)
        if child is None:
            child = self._status[key] = self.requests.labels(*key)
        child.inc()

    # -- TokenObserver ------------------------------------------------------------------

    def token_fetched(self, auth: str, seconds: float, lead: float | None) -> None:
        self.token_fetches.labels(auth, "ok").inc()
        self.token_fetch_duration.labels(auth).observe(seconds)
        if lead is not None:
            self.refresh_lead.labels(auth).observe(lead)

    def token_failed(self, auth: str, reason: str, seconds: float) -> None:
        # The reason can come from the issuer's answer: only known codes become labels, so
        # an issuer cannot mint series (or put text of its own into our metrics).
        if reason not in _FETCH_OUTCOMES:
            reason = f"http_{reason[5]}xx" if _HTTP_STATUS.fullmatch(reason) else "other"
        self.token_fetches.labels(auth, reason).inc()
        if seconds > 0:
            self.token_fetch_duration.labels(auth).observe(seconds)

    def token_waited(self, auth: str) -> None:
        self.single_flight_waits.labels(auth).inc()

    def token_used(self, auth: str, age: float) -> None:
        child = self._ages.get(auth)
        if child is None:
            child = self._ages[auth] = self.token_age.labels(auth)
        child.observe(age)

    def token_refused_fresh(self, auth: str) -> None:
        self.fresh_rejections.labels(auth).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LiveState:
    """Gauges read at scrape time rather than kept up to date on every request."""

    def __init__(self, sources: list[tuple[TokenStates, RoutePauses]]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            "proxy_token_seconds_to_expiry",
            "Seconds until the cached token expires.",
            labels=["auth"],
        )
        paused = CounterMetricFamily(
            "proxy_route_paused_seconds",
            "Seconds a route spent paused by its upstream.",
            labels=["route"],
        )
        learned = GaugeMetricFamily(
            "proxy_route_learned_rate",
            "Requests a second the route is paced at, learned from upstream throttling "
            "(only while pacing).",
            labels=["route"],
        )
        for tokens, pauses in self._sources:
            for name, seconds in tokens():
                if seconds is not None:
                    expiry.add_metric([name], seconds)
            for route, total, rate in pauses():
                paused.add_metric([route], total)
                if rate is not None:
                    learned.add_metric([route], rate)
        yield expiry
        yield paused
        yield learned

    def describe(self) -> Iterator[Metric]:
        return iter(())


class RouteMetrics:
    """A route's metric children, bound once: labels() costs a lock and a dict per call."""

    __slots__ = ("attempts", "duration", "limiter_wait", "rejections", "retries", "upstream")

    def __init__(self, metrics: Metrics, route: str) -> None:
        self.duration = metrics.duration.labels(route)
        self.upstream = metrics.upstream_duration.labels(route)
        self.attempts = metrics.attempts.labels(route)
        self.retries = metrics.retries.labels(route)
        self.limiter_wait = metrics.limiter_wait.labels(route)
        self.rejections = metrics.limiter_rejections.labels(route)
