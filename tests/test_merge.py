"""Merging a process group's metrics (proxy/observe/merge.py): counts add up, gauges follow
their rule, a dead worker's counts stay, and no gauge is exported without a rule."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import proxy
from proxy.observe.merge import GAUGE_RULES, GroupMetrics, Rule, rule_of
from proxy.observe.metrics import Metrics, RouteMetrics


def _sample(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def _worker(
    requests: Iterable[tuple[str, int]] = (),
    durations: Iterable[float] = (),
    in_flight: int = 0,
    expiry: float | None = None,
    learned: float | None = None,
) -> bytes:
    """The exposition of one worker's Metrics after these requests and with these gauges."""
    metrics = Metrics()
    for route_, status in requests:
        metrics.count_request(route_, "GET", status)
    for seconds in durations:
        RouteMetrics(metrics, "/api").duration.observe(seconds)
    metrics.in_flight.inc(in_flight)
    metrics.watch(lambda: [("travis", expiry)], lambda: [("/api", 0.0, learned)])
    return metrics.exposition()


def _merged(*workers: bytes, retired: Iterable[int] = ()) -> str:
    group = GroupMetrics()
    for index, text in enumerate(workers):
        group.seen(index, text)
    for index in retired:
        group.retire(index)
    return group.exposition().decode()


def test_counters_and_histograms_add_up_per_label_set() -> None:
    """Counts and histogram buckets, sums and counts are summed; a label set only one
    worker has is taken as it is; every family's HELP and TYPE appear once."""
    text = _merged(
        _worker([("/api", 200), ("/api", 200), ("/api", 502)], durations=[0.004, 0.3]),
        _worker([("/api", 200), ("/other", 200)], durations=[0.3]),
    )
    assert _sample(text, "proxy_requests_total", route="/api", status_class="2xx") == 3
    assert _sample(text, "proxy_requests_total", route="/api", status_class="5xx") == 1
    assert _sample(text, "proxy_requests_total", route="/other") == 1
    bucket = "proxy_request_duration_seconds_bucket"
    assert _sample(text, bucket, route="/api", le="0.005") == 1
    assert _sample(text, bucket, route="/api", le="0.5") == 3
    assert _sample(text, bucket, route="/api", le="+Inf") == 3
    assert _sample(text, "proxy_request_duration_seconds_count", route="/api") == 3
    assert _sample(text, "proxy_request_duration_seconds_sum", route="/api") == pytest.approx(0.604)
    helps = re.findall(r"^# HELP (\S+)", text, re.MULTILINE)
    types = re.findall(r"^# TYPE (\S+)", text, re.MULTILINE)
    assert len(helps) == len(set(helps)) == len(types) == len(set(types)) > 10


def test_gauges_merge_by_their_rule() -> None:
    """Requests in flight add up, the token nearest expiry counts, learned rates (each
    worker paces its own sending) add up; a label set in one worker is taken as it is."""
    text = _merged(
        _worker(in_flight=2, expiry=300.0, learned=4.0),
        _worker(in_flight=3, expiry=120.0, learned=None),
        _worker(in_flight=0, expiry=None, learned=2.5),
    )
    assert _sample(text, "proxy_in_flight_requests") == 5
    assert _sample(text, "proxy_token_seconds_to_expiry", auth="travis") == 120.0
    assert _sample(text, "proxy_route_learned_rate", route="/api") == 6.5


@pytest.mark.parametrize(("rule", "value"), [("sum", 9.0), ("min", 2.0), ("max", 7.0)])
def test_a_gauge_takes_the_rule_it_is_given(rule: Rule, value: float) -> None:
    """Each rule a gauge may name, over the workers that report the gauge."""
    group = GroupMetrics({"proxy_made_up": rule})
    for index, number in enumerate((2, 7, None)):
        sample = "" if number is None else f"proxy_made_up {number}\n"
        group.seen(index, f"# TYPE proxy_made_up gauge\n{sample}".encode())
    assert _sample(group.exposition().decode(), "proxy_made_up") == value


def test_a_gauge_without_a_rule_stays_per_worker() -> None:
    """No rule, no guess: each worker's value is kept under its own worker label."""
    group = GroupMetrics({})
    for index, number in enumerate((2, 7)):
        group.seen(index, f'# TYPE proxy_made_up gauge\nproxy_made_up{{x="a"}} {number}\n'.encode())
    text = group.exposition().decode()
    assert _sample(text, "proxy_made_up", x="a", worker="0") == 2
    assert _sample(text, "proxy_made_up", x="a", worker="1") == 7


def test_a_dead_workers_counts_stay_and_its_gauges_go() -> None:
    """Retired: its counters and histograms stay in the sum (its successor under the same
    index adds to them), its gauges leave with it, its counters' creation times stay."""
    first = _worker([("/api", 200)] * 5, durations=[0.1] * 5, in_flight=4, expiry=50.0)
    other = _worker([("/api", 200)] * 2, in_flight=1, expiry=400.0)
    group = GroupMetrics()
    group.seen(0, first)
    group.seen(1, other)
    seen = [_sample(group.exposition().decode(), "proxy_requests_total")]
    group.retire(0)
    text = group.exposition().decode()
    seen.append(_sample(text, "proxy_requests_total"))
    assert _sample(text, "proxy_request_duration_seconds_count") == 5
    assert _sample(text, "proxy_in_flight_requests") == 1
    assert _sample(text, "proxy_token_seconds_to_expiry") == 400.0
    group.seen(0, _worker([("/api", 200)]))  # the successor, counting from zero
    seen.append(_sample(group.exposition().decode(), "proxy_requests_total"))
    group.retire(0)
    group.retire(1)
    seen.append(_sample(group.exposition().decode(), "proxy_requests_total"))
    assert seen == [7, 7, 8, 8]


def test_creation_times_are_the_earliest_and_outlive_their_worker() -> None:
    """prometheus_client's *_created samples merge to the earliest, kept after a death."""
    group = GroupMetrics()
    for index, created in enumerate((200.0, 100.0)):
        group.seen(
            index,
            b"# TYPE proxy_x_total counter\nproxy_x_total 1\n"
            b"# TYPE proxy_x_created gauge\nproxy_x_created %f\n" % created,
        )
    assert _sample(group.exposition().decode(), "proxy_x_created") == 100.0
    group.retire(1)
    group.seen(1, b"# TYPE proxy_x_created gauge\nproxy_x_created 300\n")
    assert _sample(group.exposition().decode(), "proxy_x_created") == 100.0


def _exported_gauges() -> set[str]:
    """Every family the proxy's registry exports that is not a count (each with a sample)."""
    metrics = Metrics()
    metrics.token_fetched("travis", 0.1, 1.0)
    metrics.watch(lambda: [("travis", 10.0)], lambda: [("/api", 1.0, 2.0)])
    families = text_string_to_metric_families(metrics.exposition().decode())
    return {f.name for f in families if f.type not in ("counter", "histogram", "summary")}


def _declared_gauges() -> set[str]:
    """Every gauge family named in the proxy's source, wherever it is declared."""
    found: set[str] = set()
    declaration = re.compile(r"\b(?:Gauge|GaugeFamily|GaugeMetricFamily)\(\s*\"(\w+)\"")
    for path in Path(proxy.__file__).parent.rglob("*.py"):
        found |= set(declaration.findall(path.read_text()))
    return found


def test_every_gauge_the_proxy_exports_has_a_merge_rule() -> None:
    """A new gauge must say how a group merges it (GAUGE_RULES in proxy/observe/merge.py):
    min, max or sum are different answers, and a guess would be a wrong one."""
    gauges = _exported_gauges() | _declared_gauges()
    assert {"proxy_in_flight_requests", "proxy_token_seconds_to_expiry"} <= gauges
    missing = sorted(name for name in gauges if rule_of(name, "gauge") is None)
    assert missing == [], f"add these to GAUGE_RULES: {missing}"
    assert all(rule in ("sum", "min", "max") for rule in GAUGE_RULES.values())
