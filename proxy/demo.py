"""``python -m proxy demo``: the proxy in front of the vendor sandbox, in one process.

Nothing to configure and no credentials needed: the sandbox plays Travtus, TRAVIS and
Travelyzer on one port, the proxy serves demo/routes.toml in front of it, and the curl
lines printed at start work as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

import structlog
from aiohttp import web

from . import config as config_module
from .app import STATE, build_app, start
from .errors import ListenError
from .sandbox import build_sandbox_app

READY_TIMEOUT = 10.0


def _curl_lines(base: str) -> list[str]:
    return [
        f"curl -s -X POST {base}/travtus/messages/ -H 'Content-Type: application/json' "
        """-d '{"to": "+15550100", "body": "hello"}'""",
        f"curl -s {base}/travis/api/v1/road-events",
        f"curl -s '{base}/travelyzer/v1/geocoding/forward?query=Berlin'",
        f"curl -s {base}/-/ready",
    ]


def _reason(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno is not None else str(exc)


async def run_demo(config_path: str, host: str, proxy_port: int, sandbox_port: int) -> None:
    log = structlog.get_logger("proxy.demo")
    sandbox = web.AppRunner(build_sandbox_app(), access_log=None)
    await sandbox.setup()
    try:
        try:
            await web.TCPSite(sandbox, "127.0.0.1", sandbox_port).start()
        except OSError as exc:
            raise ListenError("127.0.0.1", sandbox_port, _reason(exc)) from exc
        sandbox_host, bound_sandbox_port = sandbox.addresses[0][:2]
        sandbox_url = f"http://{sandbox_host}:{bound_sandbox_port}"
        cfg = config_module.load(config_path, {**os.environ, "SANDBOX_URL": sandbox_url})
        app = build_app(cfg)
        pinned = frozenset({"host", "port"})  # the demo's options, not the file, say where
        runner, addresses = await start(app, host, proxy_port, pinned=pinned)
    except BaseException:
        await sandbox.cleanup()
        raise
    proxy_host, port = addresses[0]
    proxy_url = f"http://{proxy_host}:{port}"
    # Ask for the three tokens first, so the first curl line already works.
    tokens = app[STATE].runtime.tokens
    async with asyncio.timeout(READY_TIMEOUT):
        results = await asyncio.gather(
            *(m.token() for m in tokens.values()), return_exceptions=True
        )
    failing = [name for name, r in zip(tokens, results, strict=True) if isinstance(r, Exception)]
    if failing:
        log.warning("demo_tokens_not_ready", failing=failing)
    log.info("demo_ready", proxy=proxy_url, sandbox=sandbox_url, config=config_path)
    print("\nThe proxy is in front of the vendor sandbox. Try:\n", file=sys.stderr)
    for line in _curl_lines(proxy_url):
        print(f"  {line}", file=sys.stderr)
    print(
        f"\nSandbox request log: curl -s {sandbox_url}/-/sandbox/log\nCtrl-C stops.\n",
        file=sys.stderr,
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        await sandbox.cleanup()
        log.info("demo_stopped")
