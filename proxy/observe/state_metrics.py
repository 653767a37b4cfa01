"""The shared state's metrics, read from the backend at scrape time (nothing is counted
on the request path for them).

Label values are operation names, outcomes, limit names ("route /travtus"), auth table
names and route prefixes: never a key, a token or a URL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Final

from prometheus_client.core import Metric

from ..state.redis_link import CALL_BUCKETS, CallStats

# (family, label values, value): what a backend's samples() yields.
Sample = tuple[str, tuple[str, ...], float]

# family -> (type, help, label names). A sample of a family not listed here is a bug.
FAMILIES: Final = {
    "proxy_state_up": ("gauge", "1 while the state backend answers, 0 while it is away.", ()),
    "proxy_fleet_processes": (
        "gauge",
        "Processes of the fleet with a live heartbeat, as last read from the state backend.",
        (),
    ),
    "proxy_state_calls_total": (
        "counter",
        "Calls to the state backend, by operation and outcome.",
        ("op", "outcome"),
    ),
    "proxy_state_fallback": (
        "gauge",
        "1 while a shared limit is enforced on this process's share (backend away).",
        ("limit",),
    ),
    "proxy_lease_tokens_total": (
        "counter",
        "Slots of a shared limit leased from the state backend: granted, spent, expired.",
        ("limit", "outcome"),
    ),
    "proxy_token_shared_total": (
        "counter",
        "Shared-token outcomes: fetched here, adopted from a peer, waited, and the rest.",
        ("auth", "outcome"),
    ),
    "proxy_route_pause_events_total": (
        "counter",
        "Route pauses begun or extended, by who saw the upstream ask: local or peer.",
        ("route", "source"),
    ),
}
CALL_SECONDS: Final = "proxy_state_call_seconds"


class StateCollector:
    """Collects the backend's samples and its call latencies."""

    def __init__(
        self,
        samples: Callable[[], Iterable[Sample]],
        calls: Callable[[], CallStats | None],
    ) -> None:
        self._samples = samples
        self._calls = calls

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for name, labels, value in self._samples():
            kind, doc, names = FAMILIES[name]
            family = families.get(name)
            if family is None:
                family = families[name] = Metric(
                    name.removesuffix("_total") if kind == "counter" else name, doc, kind
                )
            family.add_sample(name, dict(zip(names, labels, strict=True)), value)
        yield from families.values()
        stats = self._calls()
        if stats is None:
            return
        latency = Metric(CALL_SECONDS, "Latency of calls to the state backend.", "histogram")
        bounds = [*(repr(b) for b in CALL_BUCKETS), "+Inf"]
        for op, (buckets, total) in sorted(stats.latency.items()):
            cumulative = 0
            for bound, count in zip(bounds, buckets, strict=True):
                cumulative += count
                latency.add_sample(f"{CALL_SECONDS}_bucket", {"op": op, "le": bound}, cumulative)
            latency.add_sample(f"{CALL_SECONDS}_count", {"op": op}, cumulative)
            latency.add_sample(f"{CALL_SECONDS}_sum", {"op": op}, total[0])
        yield latency

    def describe(self) -> Iterator[Metric]:
        return iter(())
