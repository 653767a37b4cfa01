"""The process's own metrics, named as Prometheus client libraries name them, and the build.

``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
``process_virtual_memory_bytes``, ``process_open_fds``, ``process_max_fds`` and
``process_start_time_seconds`` are read at each scrape: from /proc/self on Linux, from
``resource`` and ``os`` elsewhere (there without the memory gauges, which no portable call
gives: ``ru_maxrss`` is a peak, not the current size). ``proxy_build_info{version,python}``
is always 1, so ``on() group_left(version)`` joins it onto any series.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..release import version


class ProcessCollector:
    """Collects ``process_*`` for this process; ``proc`` is where /proc/self would be (a
    directory without ``stat`` makes it use the portable calls)."""

    __slots__ = ("_boot", "_page", "_proc", "_started", "_ticks")

    def __init__(self, proc: Path = Path("/proc/self")) -> None:
        self._proc: Path | None = proc if (proc / "stat").is_file() else None
        self._ticks = 100
        self._page = 4096
        self._boot = 0.0
        # Off Linux nothing says when the process began: the collector is made at start-up.
        self._started = time.time()
        if self._proc is not None:
            self._ticks = os.sysconf("SC_CLK_TCK")
            self._page = os.sysconf("SC_PAGE_SIZE")
            self._boot = _boot_time(self._proc.parent / "stat")
            self._started = self._boot + int(_stat(self._proc)[19]) / self._ticks

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily(
            "process_cpu_seconds", "Total user and system CPU time spent in seconds."
        )
        start = GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            value=self._started,
        )
        max_fds = GaugeMetricFamily(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            value=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
        if self._proc is not None:
            fields = _stat(self._proc)
            cpu.add_metric([], (int(fields[11]) + int(fields[12])) / self._ticks)
            yield cpu
            yield GaugeMetricFamily(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                value=int(fields[20]),
            )
            yield GaugeMetricFamily(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                value=int(fields[21]) * self._page,
            )
            fds = self._proc / "fd"
        else:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu.add_metric([], usage.ru_utime + usage.ru_stime)
            yield cpu
            fds = Path("/dev/fd")
        yield start
        if fds.is_dir():
            yield GaugeMetricFamily(
                "process_open_fds",
                "Number of open file descriptors.",
                # Listing the directory opens one descriptor more, which is counted too.
                value=len(os.listdir(fds)) - 1,
            )
        yield max_fds

    def describe(self) -> Iterator[Metric]:
        return iter(())


class BuildCollector:
    """``proxy_build_info``: the distribution's version and the Python running it."""

    __slots__ = ("_labels",)

    def __init__(self) -> None:
        self._labels = [version(), platform.python_version()]

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "proxy_build_info",
            "The proxy's version and the Python version it runs on; always 1.",
            labels=["version", "python"],
        )
        info.add_metric(self._labels, 1)
        yield info

    def describe(self) -> Iterator[Metric]:
        return iter(())


def _stat(proc: Path) -> list[str]:
    """/proc/PID/stat from its third field (the state) on: field N is at index N - 3."""
    text = (proc / "stat").read_text()
    # The command name (field 2) is in parentheses and may hold spaces or ")".
    return text[text.rindex(")") + 2 :].split()


def _boot_time(stat: Path) -> float:
    for line in stat.read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    # No btime line: measure it from the uptime instead.
    return time.time() - float((stat.parent / "uptime").read_text().split()[0])
