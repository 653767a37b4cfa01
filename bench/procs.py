"""Processes the benchmarks start and measure: spawning, CPU time, resident memory.

CPU time and memory come from /proc, so they count only the process under test (and its
children for ``--workers``), not the load generator or the upstream sharing the cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def family(pid: int) -> list[int]:
    """The process and its descendants (the workers of ``--workers N``, nginx's workers)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process and its live descendants."""
    total = 0.0
    for member in family(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (now) or VmHWM (peak) summed over the process and its descendants, in KiB."""
    total = 0
    for member in family(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
    return total


def raise_fd_limit() -> None:
    """1,000 connections need more descriptors than the usual soft limit of 1,024; children
    (wrk, the proxy, nginx) inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 65536:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


# tool -> the Debian package that brings it
TOOLS = {
    "nginx": "nginx-light",
    "wrk": "wrk",
    "valgrind": "valgrind",
    "redis-server": "redis-server",
}


def ensure_tools() -> None:
    """Install nginx, wrk, valgrind and redis-server from the distribution when missing
    (make bench runs as root)."""
    missing = [name for name in TOOLS if shutil.which(name) is None]
    if not missing and Path("/usr/sbin/nginx").exists():
        return
    print(f"installing {', '.join(missing)} from Debian packages ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)  # noqa: S607
    subprocess.run(  # noqa: S603
        ["apt-get", "install", "-y", "-qq", *TOOLS.values()],  # noqa: S607
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[int]:
    """Debian's redis-server (ensure_tools) on a free loopback port, nothing written to
    disk; yields the port once it answers PING."""
    port = free_port()
    args = [
        shutil.which("redis-server") or "redis-server",
        "--port", str(port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no", "--dir", str(directory),
    ]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"redis-server did not answer on port {port}") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


class Proxy:
    """``python -m proxy serve`` as a subprocess, its log lines going to a file (a pipe
    nobody drains would stall it once the access log fills the pipe buffer)."""

    def __init__(self, config: Path, log: Path, *extra: str, source: Path | None = None) -> None:
        # source: another checkout of the proxy to run (python -m proxy imports it from
        # the working directory), for a before/after in one run.
        self.config, self.log, self.extra, self.source = config, log, extra, source
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> Proxy:
        # A chosen port and /-/health, not the start-up line: at --log-level warning there
        # is none.
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(  # noqa: S603
                [
                    sys.executable,
                    "-m",
                    "proxy",
                    "serve",
                    "--config",
                    str(self.config),
                    "--port",
                    str(port),
                    *self.extra,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.source,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as answer,  # noqa: S310
            ):
                if answer.status == 200:
                    return self
            if self.process.poll() is not None:
                raise RuntimeError(f"proxy exited:\n{self.log.read_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"proxy did not start:\n{self.log.read_text()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        # SIGTERM starts the drain (server.drain_delay, 5 s); SIGINT after it skips the
        # drain: a benchmark has no load balancer to wait for.
        self.process.terminate()
        with contextlib.suppress(ProcessLookupError):
            time.sleep(0.05)
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def python_server(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, Any]]]:
    """A Python helper server (``-m bench.upstream``, ``-m proxy sandbox``) that prints one
    JSON line with its address when it is ready."""
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        while True:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"{args} exited before it was ready")
            if line.startswith(b"{"):
                yield process, json.loads(line)
                break
    finally:
        process.terminate()
        process.wait(10)


async def serve_announced(runner: web.AppRunner, site: web.TCPSite) -> None:
    """Start ``site``, announce its port on stdout (as python_server() reads it), and serve
    until SIGINT or SIGTERM."""
    await site.start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
