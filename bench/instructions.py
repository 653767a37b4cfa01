"""Instructions per request under callgrind: a CPU figure that noise cannot move.

CPU seconds per request swing by a third between runs on this shared 2-core machine (and
by 1.6x between machines of its kind), too much to see a 5% change. valgrind's callgrind
counts the instructions the proxy executes, the same for the same code and input whatever
the machine is doing. The proxy runs under callgrind (one process, every feature on, in
front of the nginx upstream); N1 and then N2 requests are sent to two fresh runs, and
(I(N2) - I(N1)) / (N2 - N1) cancels start-up and shutdown. Requests go out on 8 keep-alive
connections, one at a time each, so the count does not depend on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from .procs import free_port

FEW = 400
MANY = 2000
CONNECTIONS = 8


async def _load(port: int, requests: int) -> None:
    request = b"GET /api/x HTTP/1.1\r\nHost: bench\r\n\r\n"

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(requests // CONNECTIONS):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]
            await reader.readexactly(int(length))
        writer.close()

    await asyncio.gather(*(one() for _ in range(CONNECTIONS)))


def _count(config: Path, source: Path | None, requests: int, out: Path) -> int:
    port = free_port()
    process = subprocess.Popen(  # noqa: S603
        [  # noqa: S607 - valgrind from PATH, as ensure_tools installs it
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
        ],
        cwd=source,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300  # start-up is ~50x slower under valgrind
        while time.monotonic() < deadline:
            ready = f"http://127.0.0.1:{port}/-/ready"
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(ready, timeout=10) as answer,
            ):
                if answer.status == 200:
                    break
            time.sleep(0.5)
        asyncio.run(_load(port, requests))
    finally:
        process.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        process.send_signal(signal.SIGINT)  # skips the drain (server.drain_delay)
        process.wait(300)
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"callgrind wrote no totals to {out}")


def per_request(config: Path, directory: Path, source: Path | None = None) -> float:
    """Instructions the proxy of ``source`` (default: this checkout) runs per request."""
    name = "baseline" if source is not None else "proxy"
    few = _count(config, source, FEW, directory / f"{name}-{FEW}.callgrind")
    many = _count(config, source, MANY, directory / f"{name}-{MANY}.callgrind")
    return (many - few) / (MANY - FEW)


def run(config: Path, directory: Path, baseline: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {"proxy": round(per_request(config, directory))}
    if baseline is not None:
        out["baseline"] = round(per_request(config, directory, baseline))
        out["ratio"] = round(out["proxy"] / out["baseline"], 4)
    return out
