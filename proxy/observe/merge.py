"""One /-/metrics for a process group: the workers' expositions merged into the group's.

Each worker of ``serve --workers N`` keeps its own registry, untouched on the hot path; the
supervisor asks every worker for its exposition (proxy/workers/view.py) and merges them:

- counters and histograms (buckets, sums and counts): summed per label set;
- gauges: by the rule :data:`GAUGE_RULES` names for the family (sum, min or max over the
  workers alive). A gauge without a rule is not merged by a guess: it stays per worker, under
  a ``worker`` label, and tests/test_group.py fails for every gauge the proxy exports
  without one;
- ``*_created`` timestamps (prometheus_client's, of its own counters): the earliest.

A worker that dies keeps its counts. Its last snapshot moves into a retired sum that every
merged view adds, so no merged counter ever goes backwards when the worker's successor starts
again from zero. What it counted after its last snapshot is lost: the supervisor takes
snapshots at every merged scrape and every few seconds. Gauges of a dead worker go with it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Final, Literal

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

Rule = Literal["sum", "min", "max"]

GAUGE_RULES: Final[Mapping[str, Rule]] = MappingProxyType(
    {
        # Requests the group is handling.
        "proxy_in_flight_requests": "sum",
        # The group is as near an expired token as its worker nearest to one.
        "proxy_token_seconds_to_expiry": "min",
        # Each worker paces its own sending: the group sends at the sum of their rates.
        "proxy_route_learned_rate": "sum",
        # The redis backend's (proxy/state): the group is up only while every worker is...
        "proxy_state_up": "min",
        # ...and falls back while any one does;
        "proxy_state_fallback": "max",
        # each worker counts the same fleet: adding them would count it N times.
        "proxy_fleet_processes": "max",
        # The group's own footprint is its workers' together (the supervisor's is left
        # out); open over max fds stays the fill of the group's descriptors...
        "process_resident_memory_bytes": "sum",
        "process_virtual_memory_bytes": "sum",
        "process_open_fds": "sum",
        "process_max_fds": "sum",
        # ...and it is up since its oldest worker alive started.
        "process_start_time_seconds": "min",
        # 1 per version the workers run (two during an upgrade's restarts).
        "proxy_build_info": "max",
    }
)

# Families whose samples outlive their worker: counts only ever grow, and so must their sum.
_SUMMED: Final = frozenset({"counter", "histogram", "summary"})
_COMBINE: Final[Mapping[Rule, Callable[[float, float], float]]] = {
    "sum": operator.add,
    "min": min,
    "max": max,
}
WORKER_LABEL: Final = "worker"

_Labels = tuple[tuple[str, str], ...]
_Key = tuple[str, _Labels]  # the sample's name (with its _bucket/_sum suffix), its labels


class _Family:
    __slots__ = ("doc", "name", "samples", "type")

    def __init__(self, name: str, type_: str, doc: str) -> None:
        self.name = name
        self.type = type_
        self.doc = doc
        self.samples: dict[_Key, float] = {}


Snapshot = dict[str, _Family]


def parse(exposition: bytes) -> Snapshot:
    """A worker's exposition (Prometheus text format 0.0.4) by family name."""
    families: Snapshot = {}
    for metric in text_string_to_metric_families(exposition.decode()):
        family = families[metric.name] = _Family(metric.name, metric.type, metric.documentation)
        for sample in metric.samples:
            family.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return families


def rule_of(name: str, type_: str, rules: Mapping[str, Rule] = GAUGE_RULES) -> Rule | None:
    """How a family's samples combine across workers; None: they are kept per worker."""
    if type_ in _SUMMED:
        return "sum"
    if type_ == "gauge" and name.endswith("_created"):
        return "min"
    return rules.get(name) if type_ == "gauge" else None


def _kept(family: _Family) -> bool:
    """Does the family's value outlive its worker (see the module docstring)?"""
    return family.type in _SUMMED or (family.type == "gauge" and family.name.endswith("_created"))


class GroupMetrics:
    """The latest snapshot of every worker alive, the retired sum of those that died, and
    their merged exposition. Workers are known by index: a restarted worker takes the place
    of the one it replaces once that one is retired."""

    __slots__ = ("_latest", "_retired", "_rules")

    def __init__(self, rules: Mapping[str, Rule] = GAUGE_RULES) -> None:
        self._rules = rules
        self._latest: dict[int, Snapshot] = {}
        self._retired: Snapshot = {}

    def seen(self, worker: int, exposition: bytes) -> None:
        """The exposition worker ``worker`` answered just now."""
        self._latest[worker] = parse(exposition)

    def retire(self, worker: int) -> None:
        """Worker ``worker`` died: its counts stay in every merged view, its gauges go."""
        for family in self._latest.pop(worker, {}).values():
            if _kept(family):
                self._fold(self._retired, family, None)

    def exposition(self) -> bytes:
        """The group's metrics, in the text format each worker exports."""
        merged: Snapshot = {}
        for worker in sorted(self._latest):
            for family in self._latest[worker].values():
                self._fold(merged, family, worker)
        for family in self._retired.values():
            self._fold(merged, family, None)
        return generate_latest(_Families(merged))

    def _fold(self, into: Snapshot, family: _Family, worker: int | None) -> None:
        target = into.get(family.name)
        if target is None:
            target = into[family.name] = _Family(family.name, family.type, family.doc)
        rule = rule_of(family.name, family.type, self._rules)
        samples = target.samples
        if rule is None:
            for (name, labels), value in family.samples.items():
                samples[(name, (*labels, (WORKER_LABEL, str(worker))))] = value
            return
        combine = _COMBINE[rule]
        for key, value in family.samples.items():
            old = samples.get(key)
            samples[key] = value if old is None else combine(old, value)


class _Families:
    """Merged families as prometheus_client renders them (HELP and TYPE once each)."""

    def __init__(self, families: Snapshot) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families.values():
            metric = Metric(family.name, family.doc, family.type)
            for (name, labels), value in family.samples.items():
                metric.add_sample(name, dict(labels), value)
            yield metric
