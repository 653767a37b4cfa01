"""``python -m proxy sandbox``: serve the sandbox until SIGINT or SIGTERM.

On start it prints one JSON line to stdout, ``{"event": "sandbox_started", "address": ...}``,
so a script (or ``make demo``) can read the port it got with ``--port 0``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
from typing import Final

from aiohttp import web

from .. import arguments
from . import travelyzer, travis, travtus
from .app import build_sandbox_app
from .settings import LIFETIME_NAMES, SandboxSettings

# --token-lifetime NAME=SECONDS -> the settings field it sets.
_LIFETIME_FIELDS: Final = {
    "travtus": "travtus_token_lifetime",
    "travis": "travis_access_lifetime",
    "travis_refresh": "travis_refresh_lifetime",
    "travelyzer": "travelyzer_token_lifetime",
}

# Long enough for in-flight requests (injected latency included) to finish on shutdown.
SHUTDOWN_TIMEOUT: Final = 5.0


def _lifetime(text: str) -> tuple[str, float]:
    name, equals, value = text.partition("=")
    if not equals or name not in LIFETIME_NAMES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected NAME=SECONDS with NAME one of {', '.join(LIFETIME_NAMES)}"
        )
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: SECONDS must be a number above 0")
    return name, seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sandbox`` command's options to ``parser``."""
    parser.add_argument(
        "--host",
        type=arguments.listen_host,
        default="127.0.0.1",
        help="listen address (default: 127.0.0.1)",
    )
    parser.add_argument(
        "--port", type=arguments.port, default=9000, help="listen port, 0 for any (9000)"
    )
    parser.add_argument(
        "--token-lifetime",
        action="append",
        type=_lifetime,
        default=[],
        metavar="NAME=SECONDS",
        help=f"token lifetime override, NAME one of {', '.join(LIFETIME_NAMES)} (repeatable)",
    )


def settings_from_args(args: argparse.Namespace) -> SandboxSettings:
    """The settings the parsed command line asks for."""
    overrides = {_LIFETIME_FIELDS[name]: seconds for name, seconds in args.token_lifetime}
    return dataclasses.replace(SandboxSettings(), **overrides)


def _started_event(host: str, port: int) -> dict[str, object]:
    base = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    return {
        "event": "sandbox_started",
        "address": base,
        "pid": os.getpid(),
        "token_urls": {
            "travtus": base + travtus.TOKEN_PATH,
            "travis": base + travis.TOKEN_PATH,
            "travelyzer": base + travelyzer.TOKEN_PATH,
        },
        "api_urls": {
            "travtus": base + "/travtus",
            "travis": base + "/travis",
            "travelyzer": base + "/travelyzer",
        },
    }


async def serve(args: argparse.Namespace) -> None:
    """Serve the sandbox on ``args.host``:``args.port`` until SIGINT/SIGTERM, then clean up."""
    app = build_sandbox_app(settings_from_args(args))
    # No stdlib access log (it halves throughput under load tests; the sandbox keeps its own
    # log), and a client that hangs up cancels its handler, injected latency included.
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        print(json.dumps(_started_event(str(host), int(port))), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
    finally:
        await runner.cleanup()
