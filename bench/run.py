"""``make bench``: run the scenarios, print one table, write bench/results/latest.{json,md}.

All traffic stays on 127.0.0.1. The client, the upstream and the proxy share this machine's
cores, so figures are compared as ratios measured in the same run.
"""

from __future__ import annotations

import asyncio
import json
import platform
import time
from pathlib import Path
from typing import Any

from . import rate

RESULTS = Path(__file__).parent / "results"


async def scenarios() -> dict[str, Any]:
    accuracy: dict[str, Any] = {}
    for configured in (1000, 10000):
        burst = configured * 0.05  # 50 ms of traffic: well above the loop's timer resolution
        accuracy[f"limiter_{configured}"] = await rate.limiter_only(configured, burst, 3.0)
    accuracy["proxy_1000"] = await rate.through_proxy(1000, 50, 5.0)
    return {"rate_accuracy_detail": accuracy}


def table(results: dict[str, Any]) -> str:
    lines = [
        "| scenario | configured/s | achieved/s | achieved/configured | worst window / (burst + rate*t) |",
        "|---|---|---|---|---|",
    ]
    for name, row in results["rate_accuracy_detail"].items():
        windows = ", ".join(f"{k}: {v}" for k, v in row["worst_window"].items())
        lines.append(
            f"| rate {name} | {row['configured']:g} | {row['achieved']:g} | {row['ratio']} | "
            f"{windows} |"
        )
    return "\n".join(lines)


def main() -> None:
    started = time.time()
    results = asyncio.run(scenarios())
    results["rate_accuracy"] = {
        name: row["ratio"] for name, row in results["rate_accuracy_detail"].items()
    }
    results["meta"] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    markdown = table(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown + "\n")
    print(markdown)
    print(f"\nwritten: {RESULTS / 'latest.json'}, {RESULTS / 'latest.md'}")


if __name__ == "__main__":
    main()
