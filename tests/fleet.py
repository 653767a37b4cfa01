"""What the fleet tests run: proxy processes that share one Redis, a recording upstream
that notes when each request arrived, and an open-loop load split unevenly over them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

STARTUP_TIMEOUT = 20.0


class Recorder:
    """The fleet tests' upstream (tests/recorder.py), run in a process of its own so that
    arrival times are stamped as requests arrive, not when this busy process reads them."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.recorder",
            stdout=asyncio.subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
        )
        assert self._process.stdout is not None
        async with asyncio.timeout(STARTUP_TIMEOUT):
            self.port = int(await self._process.stdout.readline())

    async def arrivals(self) -> list[tuple[float, str]]:
        """Every (arrival time, path) so far, in arrival order."""
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"{self.url}/-/arrivals") as answer,
        ):
            return [(t, path) for t, path in await answer.json(content_type=None)]

    async def times(self, prefix: str = "/") -> list[float]:
        return sorted(t for t, path in await self.arrivals() if path.startswith(prefix))

    async def throttle(self, path: str, retry: int) -> None:
        """The next request for ``path`` gets 429 with Retry-After: ``retry``."""
        async with aiohttp.ClientSession() as client:
            query = {"path": path, "retry": str(retry)}
            async with client.get(f"{self.url}/-/throttle", params=query) as answer:
                assert answer.status == 204

    async def close(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await self._process.wait()


@dataclass
class Member:
    """One `serve` process (or `--workers N` group) of the fleet, its output read as it
    comes so that a full pipe never stalls it."""

    process: asyncio.subprocess.Process
    url: str
    lines: list[str] = field(default_factory=list)
    _drain: asyncio.Task[None] | None = None

    def events(self, name: str) -> list[dict[str, object]]:
        found = []
        for line in self.lines:
            if f'"{name}"' in line:
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
        return found

    async def stop(self) -> None:
        """SIGTERM, then after 10 s SIGKILL to the whole process group: a group's workers
        outliving a killed supervisor would hold the output pipe open, and ``wait()``
        waits for the pipe as well as the process."""
        if self.process.returncode is None:
            self.process.terminate()
            self.process.send_signal(signal.SIGINT)  # the second signal skips the drain
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()
        if self._drain is not None:
            await self._drain
        from .conftest import SUBPROCESS_OUTPUT

        SUBPROCESS_OUTPUT.extend(self.lines)


async def start_member(config: Path, *extra: str, env: dict[str, str] | None = None) -> Member:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # its own process group, so stop() can kill it whole
    )
    stdout = process.stdout
    assert stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while True:
                raw = await stdout.readline()
                if not raw:
                    raise AssertionError("proxy exited before starting:\n" + "\n".join(lines))
                line = raw.decode().rstrip("\n")
                lines.append(line)
                if '"proxy_started"' in line:
                    url = json.loads(line)["addresses"][0]
                    break
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise

    async def drain() -> None:
        async for raw in stdout:
            lines.append(raw.decode().rstrip("\n"))

    member = Member(process, url, lines)
    member._drain = asyncio.get_running_loop().create_task(drain())
    return member


@dataclass
class Outcome:
    member: int
    status: int
    sent: float
    seconds: float


async def drive(
    session: aiohttp.ClientSession,
    urls: Sequence[str],
    weights: Sequence[int],
    rate: float,
    seconds: float,
    path: str,
) -> list[Outcome]:
    """Open-loop load: ``rate`` requests a second for ``seconds``, the n-th going to the
    member its place in the weights' cycle picks (weights 4, 1: 80/20)."""
    cycle = [i for i, w in enumerate(weights) for _ in range(w)]
    outcomes: list[Outcome] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(member: int) -> None:
        sent = time.monotonic()
        try:
            async with session.get(urls[member] + path) as r:
                await r.read()
                status = r.status
        except aiohttp.ClientError:
            status = 0
        outcomes.append(Outcome(member, status, sent, time.monotonic() - sent))

    start = time.monotonic()
    total = int(rate * seconds)
    for n in range(total):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(cycle[n % len(cycle)])))
    await asyncio.gather(*tasks)
    return outcomes


def busiest(times: Sequence[float], window: float) -> int:
    """The most arrivals in any window of ``window`` seconds."""
    ordered = sorted(times)
    most, lo = 0, 0
    for hi, t in enumerate(ordered):
        while t - ordered[lo] > window:
            lo += 1
        most = max(most, hi - lo + 1)
    return most
