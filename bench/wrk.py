"""Run wrk with --latency and read its report."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_PERCENTILE = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)
_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def run(
    url: str,
    connections: int,
    seconds: float,
    threads: int = 1,
    timeout: float = 2.0,
    script: Path | None = None,
) -> dict[str, Any]:
    """requests/s, p50/p90/p99 in ms, and every kind of error wrk counts; ``script``: a wrk
    Lua script (bench/fleet.py paces connections with one)."""
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{round(seconds)}s",
        f"--timeout={round(timeout)}s", "--latency", url,
    ]  # fmt: skip
    if script is not None:
        command[1:1] = ["-s", str(script)]
    report = subprocess.run(  # noqa: S603
        command, capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    total = _TOTAL.search(report)
    if total is None:
        raise RuntimeError(f"unreadable wrk report:\n{report}")
    requests = int(total.group(1))
    elapsed_s = float(total.group(2)) * _UNITS[total.group(3)] / 1e3
    latency = {f"p{p}_ms": float(v) * _UNITS[u] for p, v, u in _PERCENTILE.findall(report)}
    socket_errors = _SOCKET.search(report)
    errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if socket_errors is not None:
        errors = dict(zip(errors, map(int, socket_errors.groups()), strict=True))
    non_2xx = _NON_2XX.search(report)
    return {
        "requests": requests,
        "rps": requests / elapsed_s,
        **latency,
        "errors": errors,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
    }
