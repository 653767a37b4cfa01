"""Running the proxy for a test: in the test's own event loop, served exactly as
`python -m proxy serve` serves it, or as a real subprocess, the way users and the
Dockerfile run it."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy import config as config_module
from proxy.app import STATE, ProxyState, Runner, build_app, start
from proxy.observe.logs import structlog_access_log

STARTUP_TIMEOUT = 20.0


@dataclass
class InProcessProxy:
    """A proxy served in this process; ``lines`` holds the access line of every request it
    logged (each also goes through the logging pipeline the leak scan reads)."""

    url: str
    runner: Runner
    lines: list[dict[str, Any]]
    stopped: bool = False

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    @property
    def state(self) -> ProxyState:
        return self.runner.app[STATE]

    async def stop(self) -> None:
        """Stop listening, drain, close; once (a test may stop it before its fixture does)."""
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()


async def serve(
    toml: str, env: Mapping[str, str] | None = None, *, grace: float = 1.0
) -> InProcessProxy:
    """Start a proxy from routes.toml text on a free port of 127.0.0.1 (``grace``: the
    seconds in-flight requests get when it stops). The caller stops it."""
    lines: list[dict[str, Any]] = []
    logged = structlog_access_log()

    def access_log(fields: dict[str, Any]) -> None:
        lines.append(fields)
        logged(fields)

    app = build_app(config_module.loads(toml, env or {}), access_log=access_log)
    runner, addresses = await start(app, "127.0.0.1", 0, shutdown_timeout=grace)
    host, port = addresses[0]
    return InProcessProxy(f"http://{host}:{port}", runner, lines)


@dataclass
class ProxyProcess:
    process: asyncio.subprocess.Process
    url: str
    startup: dict[str, object]
    lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self, field_name: str = "VmRSS") -> int:
        """Resident memory (VmRSS) or its peak (VmHWM) of the proxy process, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise AssertionError(f"{field_name} not in /proc/{self.pid}/status")

    async def stop(self) -> int:
        """SIGTERM, and SIGINT after it to skip the drain (server.drain_delay), as an
        operator in a hurry would; in-flight requests still get shutdown_grace."""
        if self.process.returncode is None:
            self.process.terminate()
            self.process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        assert self.process.stdout is not None
        rest = await self.process.stdout.read()
        self.lines.extend(rest.decode().splitlines())
        from .conftest import SUBPROCESS_OUTPUT

        SUBPROCESS_OUTPUT.extend(self.lines)
        return self.process.returncode if self.process.returncode is not None else -1


async def start_proxy(
    config_path: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    limits: dict[int, tuple[int, int]] | None = None,
) -> ProxyProcess:
    """Start `python -m proxy serve` on a free port and wait for its start-up log line
    (``limits``: resource limits it starts with, as a shell's ulimit would set them)."""

    def set_limits() -> None:
        for which, values in (limits or {}).items():
            resource.setrlimit(which, values)

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(config_path),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        preexec_fn=set_limits if limits else None,
    )
    assert process.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(STARTUP_TIMEOUT):
        while True:
            raw = await process.stdout.readline()
            if not raw:
                raise AssertionError("proxy exited before starting:\n" + "\n".join(lines))
            line = raw.decode().rstrip("\n")
            lines.append(line)
            if '"proxy_started"' in line:
                event = json.loads(line)
                return ProxyProcess(process, event["addresses"][0], event, lines)
