"""Metric families for the per-request path: plain numbers, exported at scrape time.

prometheus_client takes a lock on every inc() and observe() (it must be thread-safe); the
proxy updates its request metrics from one event loop thread, five to seven of them per
request. These families keep plain Python numbers (an observe is a bisect and two adds)
and hand prometheus_client ordinary metric families when /-/metrics is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)


class Value:
    """A counter or gauge child."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class Buckets:
    """A histogram child: counts per bucket (not yet cumulative) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le, "less or equal").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


Child = TypeVar("Child", Value, Buckets)


class _Family(Generic[Child]):
    __slots__ = ("children", "doc", "labelnames", "name")

    def __init__(self, name: str, doc: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = list(labelnames)
        self.children: dict[tuple[str, ...], Child] = {}

    def labels(self, *values: str) -> Child:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self._new()
        return child

    def _new(self) -> Child:
        raise NotImplementedError


class CounterFamily(_Family[Value]):
    def _new(self) -> Value:
        return Value()

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, child in self.children.items():
            family.add_metric(list(labels), child.value)
        return family


class GaugeFamily(_Family[Value]):
    def _new(self) -> Value:
        return Value()

    def collect(self) -> Metric:
        family = GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, child in self.children.items():
            family.add_metric(list(labels), child.value)
        return family


class HistogramFamily(_Family[Buckets]):
    __slots__ = ("bounds",)

    def __init__(
        self, name: str, doc: str, labelnames: Sequence[str], bounds: Sequence[float]
    ) -> None:
        super().__init__(name, doc, labelnames)
        self.bounds = tuple(bounds)

    def _new(self) -> Buckets:
        return Buckets(self.bounds)

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, child in self.children.items():
            cumulative, total = [], 0
            for bound, count in zip((*self.bounds, float("inf")), child.counts, strict=True):
                total += count
                cumulative.append((_le(bound), total))
            family.add_metric(list(labels), cumulative, child.sum)
        return family


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it ("+Inf", "0.005", "1.0")."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class FastCollector:
    """Registers the families with a prometheus_client registry."""

    def __init__(self, families: Sequence[CounterFamily | GaugeFamily | HistogramFamily]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.collect()

    def describe(self) -> Iterator[Metric]:
        return iter(())
