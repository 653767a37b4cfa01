"""Scenario 9: a fleet holding one global limit. Two members (two ``serve`` processes, then
two ``serve --workers 2`` groups) in front of one recording upstream, the load split 80/20
between them, at 1,000, 5,000 and 10,000 req/s.

Each topology runs twice, in alternating rounds: with ``[state] backend = "redis"`` (every
member configured with the whole limit, one Redis holding it for the fleet) and with the
local backend, each member holding half of every limit: the static split an operator
without shared state would configure, and the CPU baseline. The load is open enough to
show the difference: each wrk connection sends a request, waits for the answer, then pauses
``pace`` ms, and the first member has four times the second's connections, so the fleet is
offered up to 2x the limit, 1.6x through one member and 0.4x through the other. A static
split leaves the quiet member's unused half idle; a shared limit gives it to the busy one.

Measured per run: the upstream's arrivals (achieved rate after the first half second, the
busiest windows against ``burst + rate * t``), the members' CPU per request (their
processes and workers only, from /proc), Redis's scripts and commands per second (a
script's own commands count too) and CPU from ``INFO commandstats`` and ``INFO cpu`` (its
own INFO calls left out), and from the members' /-/metrics their Redis calls per second
(``proxy_state_calls_total``), mean call latency and lease tokens granted, spent and
expired unspent.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from . import wrk
from .procs import Proxy, cpu_seconds, python_server, redis_server
from .rate import _arrivals, achieved, worst_windows

# 5,000: a rate this 2-core machine can carry beside its load generator, where 10,000 is
# the machine's limit, not the fleet's.
RATES = (1000, 5000, 10000)
SECONDS = 5.0
BURST = 0.05  # seconds of the rate, as scenario 5: well above the loop's timer resolution
MEMBERS = 2
# rate -> (connections per member, 80/20; ms each connection pauses between requests):
# together they offer at most 2x the rate, when answers take no time; the quiet member
# offers less than half of it, what a static split gives it.
LOAD = {1000: ((32, 8), 20), 5000: ((80, 20), 10), 10000: ((160, 40), 10)}
TOPOLOGIES = {"processes": 1, "workers_2": 2}  # name -> --workers of each member
BACKENDS = ("local", "redis")
_SCRIPTS = frozenset(("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"))
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def run(directory: Path) -> dict[str, Any]:
    """Every topology, rate and backend; the redis backend's failure to start is recorded
    (as ``error``) rather than raised, so the local half still reports."""
    out: dict[str, Any] = {"load": _describe_load()}
    with (
        python_server("-m", "bench.upstream", "--port", "0", "--raw") as (_, info),
        redis_server(directory) as redis_port,
    ):
        upstream = f"http://127.0.0.1:{info['port']}"
        out["redis_version"] = _redis_info(redis_port).get("redis_version", "?")
        for topology, workers in TOPOLOGIES.items():
            print(f"  fleet: two members of --workers {workers}", flush=True)
            with ExitStack() as stack:
                fleets: dict[str, list[Proxy]] = {}
                rows: dict[str, Any] = {}
                for backend in BACKENDS:
                    config = _config(directory, upstream, backend, redis_port, topology)
                    try:
                        fleets[backend] = stack.enter_context(
                            _members(config, directory, f"fleet_{topology}_{backend}", workers)
                        )
                    except RuntimeError as exc:
                        if backend == "local":
                            raise
                        rows[backend] = {"error": str(exc)[-2000:]}
                for rate in RATES:
                    row = rows | {}
                    # Alternating backends rate by rate: a noisy moment on this shared
                    # machine lands on both halves of a ratio, not on one.
                    for backend, members in fleets.items():
                        row[backend] = _measure(members, rate, upstream, redis_port, directory)
                    if "cpu_us_per_request" in row.get("redis", {}):
                        row["cpu_ratio_redis_vs_local"] = round(
                            row["redis"]["cpu_us_per_request"] / row["local"]["cpu_us_per_request"],
                            3,
                        )
                    out.setdefault(topology, {})[str(rate)] = row
    return out


def _describe_load() -> dict[str, Any]:
    return {
        str(rate): {
            "connections": list(conns),
            "pace_ms": pace,
            "seconds": SECONDS,
            "most_offered": round(sum(conns) * 1000 / pace / rate, 2),  # of the rate
        }
        for rate, (conns, pace) in LOAD.items()
    }


def _config(directory: Path, upstream: str, backend: str, redis_port: int, name: str) -> Path:
    """One route per rate (their limits are separate keys in Redis); under the local
    backend each member holds half of each limit, and ``--workers 2`` halves it again."""
    share = MEMBERS if backend == "local" else 1
    text = ""
    for rate in RATES:
        text += (
            f'[[routes]]\nprefix = "/at{rate}"\nupstream = "{upstream}"\n'
            f"rate_limit = {{ rate = {rate / share:g}, burst = {rate * BURST / share:g}, "
            "max_wait = 30 }\n\n"
        )
    if backend == "redis":
        text += (
            f'[state]\nbackend = "redis"\nurl = "redis://127.0.0.1:{redis_port}/0"\n'
            f'key_prefix = "bench:{name}:"\n'
        )
    path = directory / f"fleet_{name}_{backend}.toml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def _members(config: Path, directory: Path, name: str, workers: int) -> Iterator[list[Proxy]]:
    with ExitStack() as stack:
        extra = ("--log-level", "warning", "--workers", str(workers))
        yield [
            stack.enter_context(Proxy(config, directory / f"{name}_{i}.log", *extra))
            for i in range(MEMBERS)
        ]


def _measure(
    members: list[Proxy], rate: int, upstream: str, redis_port: int, directory: Path
) -> dict[str, Any]:
    connections, pace = LOAD[rate]
    burst = rate * BURST
    urls = [f"{member.url}/at{rate}/x" for member in members]
    with ThreadPoolExecutor(MEMBERS) as pool:
        # Pools and leases warmed, unmeasured; then the bucket drains back to its burst.
        list(pool.map(lambda url: wrk.run(url, 4, 1.0), urls))
        time.sleep(2 * burst / rate + 0.5)
        _arrivals(upstream)
        script = directory / f"pace_{pace}.lua"
        script.write_text(f"function delay() return {pace} end\n")
        scraped = _scrape(members)
        redis_before, cpu_before = _redis_info(redis_port), _cpu(members)
        machine_before = _machine()
        started = time.monotonic()
        loads = list(
            pool.map(
                lambda url, conns: wrk.run(url, conns, SECONDS, timeout=30, script=script),
                urls,
                connections,
            )
        )
        elapsed = time.monotonic() - started
        cpu = _cpu(members) - cpu_before
        machine = [after - before for after, before in zip(_machine(), machine_before, strict=True)]
        redis_after = _redis_info(redis_port)
    proxies = _from_proxies(scraped, _scrape(members), rate, elapsed)
    times = _arrivals(upstream)
    seen = achieved(times, burst)
    answered = sum(load["requests"] for load in loads)
    calls = {
        name[len("cmdstat_") :]: (float(after) - float(redis_before.get(name, 0))) / elapsed
        for name, after in redis_after.items()
        if name.startswith("cmdstat_") and name != "cmdstat_info"
    }
    redis_cpu = _redis_cpu(redis_after) - _redis_cpu(redis_before)
    return {
        "configured": rate,
        "achieved": round(seen, 1),
        "ratio": round(seen / rate, 4),
        "worst_window": worst_windows(times, rate, burst),
        "requests": len(times),
        "members_rps": [round(load["rps"], 1) for load in loads],
        "p99_ms": [load.get("p99_ms") for load in loads],
        "errors": sum(sum(load["errors"].values()) + load["non_2xx"] for load in loads),
        "cpu_us_per_request": round(cpu / max(1, answered) * 1e6, 1),
        # Near 1: the machine, not the limit, set the pace (every process shares 2 cores).
        "machine_busy": round(machine[0] / max(1, machine[1]), 3),
        # Redis counts the commands a script runs as well as the script itself.
        "redis_commands_per_s": round(sum(calls.values()), 1),
        "redis_scripts_per_s": round(sum(v for k, v in calls.items() if k in _SCRIPTS), 1),
        "redis_commands_by_name": {k: round(v, 1) for k, v in calls.items() if v > 0},
        "redis_cpu_us_per_request": round(redis_cpu / max(1, answered) * 1e6, 2),
        **proxies,
    }


def _cpu(members: list[Proxy]) -> float:
    return sum(cpu_seconds(member.pid) for member in members)


def _scrape(members: list[Proxy]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The members' metrics summed, {(name, labels): value} (a group's /-/metrics is
    already its workers' sum)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for member in members:
        with urllib.request.urlopen(f"{member.url}/-/metrics", timeout=10) as answer:  # noqa: S310
            text = answer.read().decode()
        for line in text.splitlines():
            name, brace, rest = line.partition("{")
            if not brace or not name.startswith(("proxy_lease_", "proxy_state_call")):
                continue
            labels, value = rest.rsplit("} ", 1)
            key = (name, frozenset(_LABEL.findall(labels)))
            out[key] = out.get(key, 0.0) + float(value)
    return out


def _from_proxies(
    before: dict[tuple[str, frozenset[tuple[str, str]]], float],
    after: dict[tuple[str, frozenset[tuple[str, str]]], float],
    rate: int,
    elapsed: float,
) -> dict[str, Any]:
    """What the members say of the run: their Redis calls (every op: leases, heartbeats,
    tokens) per second and mean latency, and this rate's lease tokens by outcome
    (granted, spent, expired). Empty under the local backend."""
    delta = {key: value - before.get(key, 0.0) for key, value in after.items()}
    tokens: dict[str, float] = {}
    calls = seconds = timed = 0.0
    for (name, labels), value in delta.items():
        named = dict(labels)
        if name == "proxy_lease_tokens_total" and named.get("limit", "").endswith(f"/at{rate}"):
            outcome = named.get("outcome", "?")
            tokens[outcome] = tokens.get(outcome, 0.0) + value
        elif name == "proxy_state_calls_total":
            calls += value
        elif name == "proxy_state_call_seconds_sum":
            seconds += value
        elif name == "proxy_state_call_seconds_count":
            timed += value
    out: dict[str, Any] = {"lease_tokens": tokens}
    if any(name == "proxy_state_calls_total" for name, _ in after):
        out["state_calls_per_s"] = round(calls / elapsed, 1)
    if timed:
        out["state_call_ms"] = round(seconds / timed * 1e3, 3)
    return out


def _machine() -> tuple[int, int]:
    """Busy and total clock ticks of every core since boot (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return sum(ticks) - idle, sum(ticks)


def _redis_cpu(info: dict[str, str]) -> float:
    return float(info.get("used_cpu_user", 0)) + float(info.get("used_cpu_sys", 0))


def _redis_info(port: int) -> dict[str, str]:
    """``INFO all`` as {field: value}; a command's stats line becomes {cmdstat_X: calls}."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"INFO all\r\n")
        reply = sock.makefile("rb")
        header = reply.readline()
        if not header.startswith(b"$"):
            raise RuntimeError(f"redis INFO answered {header[:200]!r}")
        text = reply.read(int(header[1:]) + 2).decode()
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if not sep or line.startswith("#"):
            continue
        if name.startswith("cmdstat_"):
            value = value.split(",", 1)[0].removeprefix("calls=")
        out[name] = value
    return out
