"""Token fetches an operator can see: log lines while a fetch waits, host and port in its
failures, and one story told by /-/ready, /-/status and a client's 503."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer
from structlog.testing import capture_logs

from proxy.sandbox import SandboxSettings, build_sandbox_app

from .conftest import ProxyFactory
from .processes import start_proxy

SECRET = "sandbox-travelyzer-secret"


def travelyzer(token_url: str, api_url: str, timeout: str = "") -> str:
    return (
        f'[[routes]]\nprefix = "/t"\nupstream = "{api_url}"\nauth = "tz"\n'
        f'[auth.tz]\ntype = "travelyzer"\ntoken_url = "{token_url}"\n'
        f'api_key = "sandbox-travelyzer-key"\napi_secret = "{SECRET}"\nexpires_in = "24h"\n'
        f"{timeout}\n"
    )


@pytest.fixture
async def sandbox(aiohttp_server: AiohttpServer) -> str:
    server = await aiohttp_server(build_sandbox_app(SandboxSettings()), host="127.0.0.1")
    return f"http://127.0.0.1:{server.port}"


async def hang_token_endpoint(sandbox: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{sandbox}/-/sandbox/control", json={"latency": {"travelyzer_token": 30}}
        ) as r,
    ):
        assert r.status == 200


async def get_json(client: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with client.get(url) as r:
        return r.status, await r.json()


def sandbox_config(sandbox: str, timeout: str = "") -> str:
    return travelyzer(
        f"{sandbox}/travelyzer-auth/api-clients/token", f"{sandbox}/travelyzer", timeout
    )


async def test_a_hanging_token_endpoint_is_logged_and_told_the_same_everywhere(
    sandbox: str, tmp_path: Path
) -> None:
    """While the token request hangs, /-/ready says fetching and the log says it started
    and is slow; once it times out, /-/ready, /-/status and the client's 503 carry the
    same sentence naming host:port, and the log line names them too."""
    await hang_token_endpoint(sandbox)
    endpoint = sandbox.removeprefix("http://")
    config = tmp_path / "routes.toml"
    config.write_text(sandbox_config(sandbox, "timeout = { connect = 1, read = 2 }"))
    proxy = await start_proxy(config)
    try:
        async with aiohttp.ClientSession() as client:
            status, ready = await get_json(client, f"{proxy.url}/-/ready")
            assert status == 503
            tz = ready["auth"]["tz"]
            assert (tz["state"], tz["last_outcome"], tz["endpoint"]) == (
                "fetching",
                None,
                endpoint,
            )
            assert tz["fetching_for_s"] >= 0
            assert tz["message"].startswith(f"token request to {endpoint} sent ")
            assert tz["message"].endswith(" s ago, no answer yet")
            # The client waits for the fetch in flight, which times out after 2 s.
            async with client.get(f"{proxy.url}/t/v1/geocoding/forward?query=x") as r:
                assert r.status == 503
                error = await r.json()
            _, ready = await get_json(client, f"{proxy.url}/-/ready")
            _, status_view = await get_json(client, f"{proxy.url}/-/status")
    finally:
        await proxy.stop()
    said = f"last token request to {endpoint} failed: timeout (no answer within 2.0 s)"
    assert error["error"] == "token_unavailable"
    assert error["message"].startswith(f"no valid token for auth 'tz': {said}; next one in ")
    for view in (ready["auth"]["tz"], status_view["auth"]["tz"]):
        assert view["last_outcome"] == "timeout"
        assert view["message"].startswith(said)
    events = [json.loads(line) for line in proxy.lines if line.startswith("{")]
    seen = [e for e in events if e["event"].startswith("token_fetch")]
    assert [(e["event"], e["level"]) for e in seen[:3]] == [
        ("token_fetch_started", "info"),
        ("token_fetch_slow", "warning"),
        ("token_fetch_failed", "warning"),
    ]
    assert {e["endpoint"] for e in seen[:3]} == {endpoint}
    assert seen[0]["grant"] == "api_key"
    assert seen[1]["waited_s"] == 1.0
    assert seen[2]["reason"] == "timeout"
    assert seen[2]["description"] == "no answer within 2.0 s"
    assert SECRET not in "\n".join(proxy.lines)


async def test_a_client_told_the_endpoint_is_slow_reads_what_ready_reads(
    sandbox: str,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The quick 503 while a first fetch hangs says how long the token request has waited
    and where it went, as /-/ready says at the same time (not last_outcome null alone)."""
    monkeypatch.setattr("proxy.auth.manager.MAX_FETCH_WAIT", 0.3)
    await hang_token_endpoint(sandbox)
    endpoint = sandbox.removeprefix("http://")
    proxy = await make_proxy(sandbox_config(sandbox))
    async with client.get(f"{proxy}/t/v1/geocoding/forward?query=x") as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "1"
        error = await r.json()
    _, ready = await get_json(client, f"{proxy}/-/ready")
    prefix, sent = f"token request to {endpoint} sent ", " s ago, no answer yet"
    assert error["message"].startswith(f"no valid token for auth 'tz': {prefix}")
    assert error["message"].endswith(sent)
    tz = ready["auth"]["tz"]
    assert tz["state"] == "fetching"
    assert tz["message"].startswith(prefix)
    assert tz["message"].endswith(sent)
    assert tz["fetching_for_s"] >= 0.3


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_refused_connection_names_host_and_port(
    make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    """A token endpoint nobody listens on: the log line, /-/ready and the 503 all say
    which host:port refused, in the system's words."""
    port = closed_port()
    with capture_logs() as events:
        proxy = await make_proxy(
            travelyzer(f"http://127.0.0.1:{port}/token", "http://127.0.0.1:9/api")
        )
        async with asyncio.timeout(5):
            while not any(e["event"] == "token_fetch_failed" for e in events):
                await asyncio.sleep(0.02)
        async with client.get(f"{proxy}/t/x") as r:
            assert r.status == 503
            error = await r.json()
        _, ready = await get_json(client, f"{proxy}/-/ready")
    why = f"cannot connect to 127.0.0.1:{port}: Connection refused"
    failed = next(e for e in events if e["event"] == "token_fetch_failed")
    assert (failed["reason"], failed["description"], failed["endpoint"]) == (
        "connection_error",
        why,
        f"127.0.0.1:{port}",
    )
    assert f"failed: connection_error ({why})" in error["message"]
    assert f"failed: connection_error ({why})" in ready["auth"]["tz"]["message"]
    assert ready["auth"]["tz"]["state"] == "failing"


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_an_issuers_own_words_stay_in_the_log(
    sandbox: str, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    """A refusal's error text comes from the issuer (it may name a user): the log line
    keeps it, while /-/ready and the client's 503, open to anyone, give the reason only."""
    with capture_logs() as events:
        proxy = await make_proxy(sandbox_config(sandbox).replace(SECRET, "wrong-secret-0000"))
        async with asyncio.timeout(5):
            while not any(e["event"] == "token_fetch_failed" for e in events):
                await asyncio.sleep(0.02)
        async with client.get(f"{proxy}/t/x") as r:
            error = await r.json()
        _, ready = await get_json(client, f"{proxy}/-/ready")
    failed = next(e for e in events if e["event"] == "token_fetch_failed")
    assert (failed["reason"], failed["description"]) == (
        "unauthorized",
        "Invalid API key or secret",
    )
    said = f"last token request to {sandbox.removeprefix('http://')} failed: unauthorized; "
    assert error["message"].startswith(f"no valid token for auth 'tz': {said}")
    assert ready["auth"]["tz"]["message"].startswith(said)
    assert "Invalid API key" not in json.dumps([error, ready])


async def test_an_issuers_own_error_text_never_reaches_open_endpoints(
    aiohttp_server: AiohttpServer, make_proxy: ProxyFactory
) -> None:
    """An issuer may put anything in its "error" (a user name, the password it refused):
    only a known OAuth2 or HTTP word is kept as the reason; anything else is told by its
    status, in /-/ready (open to anyone), /-/status and a client's 503 alike."""
    hostile = f"user driver@example.com pw {SECRET} <img src=x onerror=alert(1)>"

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"error": hostile, "error_description": "no"}, status=401)

    app = web.Application()
    app.router.add_post("/token", token)
    issuer = await aiohttp_server(app, host="127.0.0.1")
    proxy = await make_proxy(
        travelyzer(f"http://127.0.0.1:{issuer.port}/token", "http://127.0.0.1:9")
    )
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{proxy}/t/x") as r:
            refused = await r.text()
            assert r.status == 503
        async with client.get(f"{proxy}/-/ready") as r:
            ready = await r.text()
        async with client.get(f"{proxy}/-/status") as r:
            status = await r.text()
    assert json.loads(ready)["auth"]["tz"]["last_outcome"] == "http_401"
    for shown in (refused, ready, status):
        assert "driver" not in shown
        assert "onerror" not in shown
        assert SECRET.lower() not in shown.lower()
