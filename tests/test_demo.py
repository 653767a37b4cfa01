"""`python -m proxy demo` as a user runs it, and what its output must never contain."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
SECRETS = (
    "sandbox-travtus-secret",
    "sandbox-travis-secret",
    "sandbox-travis-password",
    "sandbox-travelyzer-secret",
    "sandbox-travelyzer-key",
)


async def test_demo_serves_all_three_vendors_and_never_logs_a_secret_or_token() -> None:
    """The demo's curl targets work with no credentials; its output holds no secret or token."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "demo",
        "--port",
        "0",
        "--sandbox-port",
        "0",
        "--log-format",
        "json",
        "--log-level",
        "debug",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stdout is not None
    ready: dict[str, Any] = {}
    async with asyncio.timeout(20):
        while not ready:
            line = await process.stdout.readline()
            assert line, "demo exited before it was ready"
            if b'"demo_ready"' in line:
                ready = json.loads(line)
    proxy, sandbox = ready["proxy"], ready["sandbox"]
    try:
        async with aiohttp.ClientSession() as client:
            async with client.post(
                f"{proxy}/travtus/messages/", json={"to": "+15550100", "body": "hello"}
            ) as r:
                assert r.status == 201
            async with client.get(f"{proxy}/travis/api/v1/road-events") as r:
                assert r.status == 200
            async with client.get(f"{proxy}/travelyzer/v1/geocoding/forward?query=Berlin") as r:
                assert r.status == 200
            # Exercise the paths that log: a refused token, a down issuer, a refused refresh.
            async with client.post(
                f"{sandbox}/-/sandbox/control", json={"revoke": ["travis"], "revoke_refresh": True}
            ) as r:
                assert r.status == 200
            async with client.get(f"{proxy}/travis/api/v1/road-events") as r:
                assert r.status == 200
            async with client.get(f"{sandbox}/-/sandbox/log") as r:
                entries = (await r.json())["entries"]
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, err.decode()
    output = out.decode() + err.decode()
    tokens = {
        value.split(" ", 1)[1]
        for entry in entries
        for name, value in entry.get("headers") or []
        if name.lower() == "authorization" and " " in value
    }
    assert len(tokens) >= 4
    for secret in (*SECRETS, *tokens):
        assert secret not in output
    assert '"demo_stopped"' in output
