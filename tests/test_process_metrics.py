"""A serving proxy reports what it is and what it costs: its version (start-up line,
/-/status, proxy_build_info) and the standard process_* metrics, for one process and
merged for a --workers group."""

from __future__ import annotations

import asyncio
import platform
import resource
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from proxy.observe.process_metrics import ProcessCollector
from proxy.release import version

from .conftest import Scripted, get, route
from .processes import start_proxy

PROCESS = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
)


def _samples(text: str) -> dict[str, float]:
    """Unlabelled samples by name, and proxy_build_info's labels as "name{k=v,...}"."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            found[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return found


async def _scrape(client: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with client.get(f"{url}/-/metrics") as response:
        assert response.status == 200
        return _samples(await response.text())


def _build_info() -> str:
    return f"proxy_build_info{{python={platform.python_version()},version={version()}}}"


async def test_one_process_reports_its_version_and_plausible_process_metrics(
    scripted: Scripted, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    """The start-up line and /-/status carry the version; CPU grows with the work done,
    memory matches what /proc says, descriptors are open under the limit the proxy raised
    itself to, and the start time is when the process started."""
    config = tmp_path / "routes.toml"
    config.write_text(route(scripted))
    before = time.time()
    proxy = await start_proxy(config, limits={resource.RLIMIT_NOFILE: (1024, 4096)})
    try:
        assert proxy.startup["version"] == version()
        async with client.get(f"{proxy.url}/-/status") as response:
            assert (await response.json())["version"] == version()
        first = await _scrape(client, proxy.url)
        assert set(PROCESS) <= first.keys()
        assert first[_build_info()] == 1
        assert before - 2 < first["process_start_time_seconds"] <= time.time()
        assert 3 < first["process_open_fds"] < first["process_max_fds"] == 4096
        rss = proxy.rss_kib() * 1024
        assert 0.5 < first["process_resident_memory_bytes"] / rss < 2
        assert first["process_virtual_memory_bytes"] > first["process_resident_memory_bytes"]
        # The counter moves in clock ticks (10 ms): serve until it has.
        for _ in range(20):
            answers = await asyncio.gather(*(get(client, f"{proxy.url}/api/x") for _ in range(50)))
            assert {a.status for a in answers} == {200}
            later = await _scrape(client, proxy.url)
            if later["process_cpu_seconds_total"] > first["process_cpu_seconds_total"]:
                break
        assert later["process_cpu_seconds_total"] > first["process_cpu_seconds_total"]
        assert later["process_start_time_seconds"] == first["process_start_time_seconds"]
    finally:
        assert await proxy.stop() == 0


async def test_a_group_merges_process_metrics_into_its_own(
    scripted: Scripted, tmp_path: Path
) -> None:
    """With --workers 2: CPU, memory and descriptors are the workers' sums, the start time
    is the oldest worker's, build info is one series, and the supervisor's start-up line
    and the group's /-/status carry the version."""
    config = tmp_path / "routes.toml"
    config.write_text(route(scripted))
    group = await start_proxy(config, "--workers", "2")
    url = group.url
    try:
        assert group.startup["version"] == version()
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{url}/-/status") as response:
                assert (await response.json())["version"] == version()
            own = []
            for index in (0, 1):
                async with client.get(f"{url}/-/metrics?worker={index}") as response:
                    own.append(_samples(await response.text()))
            merged = await _scrape(client, url)
        assert merged[_build_info()] == 1
        assert [k for k in merged if k.startswith("proxy_build_info")] == [_build_info()]
        assert merged["process_max_fds"] == own[0]["process_max_fds"] + own[1]["process_max_fds"]
        assert merged["process_start_time_seconds"] == min(
            w["process_start_time_seconds"] for w in own
        )
        # Scraped after the workers' own: a count can only have grown since.
        assert merged["process_cpu_seconds_total"] >= sum(
            w["process_cpu_seconds_total"] for w in own
        )
        for name in ("process_resident_memory_bytes", "process_open_fds"):
            total = own[0][name] + own[1][name]
            assert 0.8 * total <= merged[name] <= 1.2 * total, name
        assert not any("worker" in key for key in merged if key.startswith("process_"))
    finally:
        assert await group.stop() == 0


def test_without_proc_the_portable_calls_still_give_cpu_fds_and_start_time(
    tmp_path: Path,
) -> None:
    """Off Linux (here: a /proc that is not there) CPU, descriptors and start time come
    from resource and os, and no memory gauge is made up."""
    before = time.time()
    collector = ProcessCollector(tmp_path / "no-proc")
    names = {s.name: s.value for m in collector.collect() for s in m.samples}
    assert names.keys() == set(PROCESS) - {
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
    }
    assert names["process_cpu_seconds_total"] > 0
    assert names["process_max_fds"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert before <= names["process_start_time_seconds"] <= time.time()
