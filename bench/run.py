"""``make bench``: run the scenarios, print one table, write bench/results/latest.{json,md}.

All traffic stays on 127.0.0.1. The load generator, the upstream and the proxy share this
machine's cores, so figures are compared as ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import charts, fleet, instructions, nginx, rate, report, stream, throughput
from .procs import ensure_tools, python_server, raise_fd_limit

RESULTS = Path(__file__).parent / "results"
GIB = 1 << 30


def scenarios(stream_bytes: int, baseline: Path | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with python_server("-m", "proxy", "sandbox", "--port", "0") as (_, sandbox):
            token_url = str(sandbox["token_urls"]["travtus"])
            with nginx.upstream(directory / "upstream", stream_bytes) as (_, up_port):
                with nginx.reverse_proxy(directory / "nginx_proxy", up_port) as (ngx, ngx_port):
                    print(
                        "scenarios 1-4: direct, nginx, aiohttp peer, proxy, proxy --workers 2",
                        flush=True,
                    )
                    results["throughput"] = throughput.run_all(
                        directory, up_port, (ngx.pid, ngx_port), token_url, baseline
                    )
                print("scenario 8: instructions per request (callgrind)", flush=True)
                results["instructions"] = instructions.run(
                    throughput.proxy_config(directory, "counted", up_port, token_url),
                    directory,
                    baseline,
                )
                print("scenario 7: 1,000 connections", flush=True)
                results["many_connections"] = throughput.many_connections(
                    directory, up_port, token_url
                )
                print("scenario 7b: 1,000 slowloris connections beside normal traffic", flush=True)
                results["slowloris"] = throughput.slowloris(directory, up_port, token_url)
                print("scenario 6: streaming", flush=True)
                with python_server("-m", "bench.upstream", "--port", "0") as (_, sink):
                    results["streaming"] = stream.run(
                        directory, up_port, int(sink["port"]), token_url, stream_bytes
                    )
        print("scenario 5: rate accuracy", flush=True)
        results["rate_accuracy_detail"] = rate.run(directory)
        print("scenario 9: a fleet on one Redis", flush=True)
        results["fleet"] = fleet.run(directory)
    return results


def only(name: str) -> dict[str, Any]:
    """One scenario alone, merged into the last results (``--only``)."""
    previous = RESULTS / "latest.json"
    results: dict[str, Any] = json.loads(previous.read_text()) if previous.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"scenario {name} alone", flush=True)
        results[name] = ONLY[name](Path(tmp))
    return results


# --only NAME: the scenarios that can run alone, by the key their results are kept under.
ONLY = {"fleet": fleet.run, "rate_accuracy_detail": rate.run}


@contextlib.contextmanager
def _checkout(revision: str | None) -> Iterator[Path | None]:
    """A temporary git worktree of ``revision`` (None: nothing)."""
    if revision is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "baseline"
        git = ["git", "-C", str(Path(__file__).parent.parent)]
        subprocess.run([*git, "worktree", "add", "--detach", str(tree), revision], check=True)  # noqa: S603
        try:
            yield tree
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=False)  # noqa: S603


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--stream-mb", type=int, default=1024, help="size of scenario 6")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the proxy of this git revision in the throughput rounds (CPU before/after)",
    )
    parser.add_argument(
        "--only",
        choices=sorted(ONLY),
        help="run this scenario alone; the other results of latest.json are kept",
    )
    args = parser.parse_args()
    ensure_tools()
    raise_fd_limit()
    started = time.time()
    if args.only:
        results = only(args.only)
    else:
        with _checkout(args.baseline) as baseline:
            results = scenarios(args.stream_mb * (1 << 20), baseline)
        if args.baseline:
            results["baseline"] = args.baseline
    results.update(report.headline(results))
    meta = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
        # Other work on the machine moves every figure: the charts show what it was.
        "load_average": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    if args.only:
        # The rest of the results keep the date they were measured at.
        results.setdefault("meta", {})[f"{args.only}_run"] = meta
    else:
        results["meta"] = meta | {
            "rounds": throughput.ROUNDS,
            "seconds_per_run": throughput.SECONDS,
        }
    RESULTS.mkdir(exist_ok=True)
    markdown = report.table(results, charts.write(results, RESULTS))
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown + "\n")
    print(markdown)
    print(f"\nwritten: {RESULTS / 'latest.json'}, {RESULTS / 'latest.md'}")


if __name__ == "__main__":
    main()
