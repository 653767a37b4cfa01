"""The status page at /-/, in a real headless Chromium: it renders /-/status, redraws it as
the proxy's state changes, shows no secret, and only an admin may open it.

The browser is Debian's ``chromium`` (``make test`` installs it). A page is read either
with ``--dump-dom`` after a virtual-time budget (its script has run by then), or driven
over the DevTools protocol (a websocket, spoken by aiohttp) to read it several times.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from proxy.observe.recent import RecentErrors
from proxy.sandbox import build_sandbox_app

from .processes import InProcessProxy, serve, start_proxy

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Root in a container has no user namespace for Chromium's sandbox; the profile is the
# test's own, so nothing is kept between runs.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--mute-audio")
OPS_KEY = "ops-key-7f3a9c1e5b2d4f60"
APP_KEY = "app-key-0c9e2b7a4d1f3e58"

CONFIG = """
[server]
admin_access = "{admin}"
{clients}
[[routes]]
prefix = "/travtus"
upstream = "{sandbox}/travtus"
auth = "travtus"
rate_limit = {{ rate = 1, per = 60, burst = 1, max_wait = 0 }}

[[routes]]
prefix = "/travis"
upstream = "{sandbox}/travis"
auth = "travis"

[auth.travtus]
type = "client_credentials"
token_url = "{sandbox}/cognito/oauth2/token"
client_id = "sandbox-travtus-client"
client_secret = "sandbox-travtus-secret"

[auth.travis]
type = "password"
token_url = "{sandbox}/keycloak/realms/travis-road-services/protocol/openid-connect/token"
client_id = "travis-portal"
client_secret = "sandbox-travis-secret"
username = "driver@example.com"
password = "sandbox-travis-password"
scope = "openid"
"""
CLIENTS = f"""
[clients.ops]
key = "{OPS_KEY}"
[clients.app]
key = "{APP_KEY}"
"""


def config(sandbox: str, admin: str = "any", clients: bool = False) -> str:
    return CONFIG.format(sandbox=sandbox, admin=admin, clients=CLIENTS if clients else "")


@pytest.fixture
async def sandbox(aiohttp_server: AiohttpServer) -> str:
    server = await aiohttp_server(build_sandbox_app(), host="127.0.0.1")
    return f"http://127.0.0.1:{server.port}"


async def secrets_of(proxy: InProcessProxy) -> list[str]:
    """Every credential of the config and every token the sandbox issued to the proxy."""
    runtime = proxy.state.runtime
    tokens = [await manager.token() for manager in runtime.tokens.values()]
    found = [*runtime.secrets(), *tokens]
    assert len(tokens) == 2
    assert all(len(s) >= 8 for s in found)
    return found


async def dump_dom(url: str, profile: Path) -> str:
    """The page's DOM once its script has had five seconds of (virtual) time."""
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(20):
            out, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return out.decode()


def cells(dom: str) -> dict[str, str]:
    """The page's values by their data-key."""
    found = re.findall(r'<td[^>]*data-key="([^"]+)"[^>]*>(.*?)</td>', dom)
    return {key: re.sub(r"<[^>]+>", "", text) for key, text in found}


class DevTools:
    """One page of a browser, over the DevTools protocol: commands answered by id, events
    kept in ``events``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._id = 0
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        await self._ws.send_json({"id": self._id, "method": method, "params": params})
        while True:
            message: dict[str, Any] = await self._ws.receive_json()
            if message.get("id") == self._id:
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result
            self.events.append(message)

    async def evaluate(self, expression: str) -> Any:
        answer = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in answer, answer
        return answer["result"].get("value")

    async def cells(self) -> dict[str, str]:
        found = await self.evaluate(
            "Object.fromEntries([...document.querySelectorAll('[data-key]')]"
            ".map(e => [e.dataset.key, e.textContent]))"
        )
        assert isinstance(found, dict)
        return found

    async def until(self, key: str, wanted: str, within: float = 10.0) -> dict[str, str]:
        """The page's values once ``key`` reads ``wanted`` (several refreshes at most)."""
        seen: dict[str, str] = {}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while (seen := await self.cells()).get(key) != wanted:
                    await asyncio.sleep(0.1)
        assert seen.get(key) == wanted, (key, seen)
        return seen


@contextlib.asynccontextmanager
async def browser(profile: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium with its DevTools port on loopback; yields its first page."""
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        active = profile / "DevToolsActivePort"
        async with asyncio.timeout(20):
            while len(lines := (active.read_text() if active.exists() else "").split()) < 2:
                await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{lines[0]}/json/list") as answer:
                targets = await answer.json()
            page = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield DevTools(ws)
    finally:
        process.terminate()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


async def test_the_page_renders_routes_auth_tables_and_limits_as_configured(
    sandbox: str, tmp_path: Path
) -> None:
    """Opened in Chromium, /-/ shows each route with its upstream, each auth table's token
    state and each limit with its configured rate and burst: and none of the credentials
    or tokens behind them."""
    proxy = await serve(config(sandbox, admin="loopback"))
    try:
        hidden = await secrets_of(proxy)
        dom = await dump_dom(f"{proxy.url}/-/", tmp_path / "profile")
    finally:
        await proxy.stop()
    shown = cells(dom)
    assert shown["route./travtus.upstream"] == f"{sandbox}/travtus"
    assert shown["route./travis.upstream"] == f"{sandbox}/travis"
    assert shown["route./travtus.auth"] == "travtus"
    for name in ("travtus", "travis"):
        assert shown[f"auth.{name}.ready"] == "yes"
        assert shown[f"auth.{name}.last_outcome"] == "ok"
        assert re.fullmatch(r"\d+m \d+s", shown[f"auth.{name}.expires_in"])
    assert shown["limit.route /travtus.rate"] == "1 / 60 s"
    assert shown["limit.route /travtus.burst"] == "1"
    assert shown["limit.route /travtus.fill"] == "0%"
    assert shown["pause./travtus.paused"] == "no"
    assert "Updated" in dom
    assert [s for s in hidden if s in dom] == []


async def test_the_page_follows_the_proxy_and_shows_no_secret_while_it_does(
    sandbox: str, tmp_path: Path
) -> None:
    """With the page open, a request the route's limit refuses shows up within a refresh
    or so: one more refusal, a fuller bucket and the error in the recent errors. The page
    ran under its own CSP without a violation; neither its DOM, at any time, nor the page
    and the status it is drawn from hold a secret or token."""
    proxy = await serve(config(sandbox, admin="client:ops", clients=True))
    try:
        hidden = await secrets_of(proxy)
        async with browser(tmp_path / "profile") as page:
            await page.call("Runtime.enable")
            await page.call("Log.enable")
            await page.call("Network.enable")
            # The operator's browser carries the admin client's key (a front proxy adds it).
            await page.call("Network.setExtraHTTPHeaders", headers={"X-Proxy-Key": OPS_KEY})
            await page.call("Page.navigate", url=f"{proxy.url}/-/")
            before = await page.until("limit.route /travtus.rejected", "0")
            assert before["limit.route /travtus.fill"] == "0%"
            assert "error.0.error" not in before
            dom_before = await page.evaluate("document.documentElement.outerHTML")

            async with aiohttp.ClientSession(headers={"X-Proxy-Key": APP_KEY}) as client:
                for expected in (200, 429):
                    async with client.get(f"{proxy.url}/travtus/messages/") as answer:
                        assert answer.status == expected
            async with aiohttp.ClientSession(headers={"X-Proxy-Key": OPS_KEY}) as admin:
                raw = [await (await admin.get(f"{proxy.url}/-/{p}")).text() for p in ("", "status")]

            after = await page.until("limit.route /travtus.rejected", "1")
            assert after["limit.route /travtus.fill"] != "0%"
            assert (after["error.0.route"], after["error.0.status"]) == ("/travtus", "429")
            assert after["error.0.error"] == "rate_limited"
            dom_after = await page.evaluate("document.documentElement.outerHTML")
            events = list(page.events)
    finally:
        await proxy.stop()
    for text in (dom_before, dom_after, *raw):
        assert [s for s in hidden if s in text] == []
    thrown = [e for e in events if e.get("method") == "Runtime.exceptionThrown"]
    blocked = [e for e in events if "Content Security Policy" in json.dumps(e.get("params", {}))]
    assert (thrown, blocked) == ([], [])


async def test_only_an_admin_may_open_the_page(sandbox: str) -> None:
    """/-/ follows server.admin_access as /-/status does: no key or another client's key
    gets 403 forbidden, the admin client's key gets the page."""
    proxy = await serve(config(sandbox, admin="client:ops", clients=True))
    try:
        async with aiohttp.ClientSession() as client:
            for headers, expected in (({}, 403), ({"X-Proxy-Key": APP_KEY}, 403)):
                async with client.get(f"{proxy.url}/-/", headers=headers) as answer:
                    assert answer.status == expected
                    assert answer.headers["X-Proxy-Error"] == "forbidden"
                    assert "Proxy status" not in await answer.text()
            async with client.get(f"{proxy.url}/-/", headers={"X-Proxy-Key": OPS_KEY}) as answer:
                assert answer.status == 200
                assert "<title>Proxy status</title>" in await answer.text()
    finally:
        await proxy.stop()


async def test_the_page_is_self_contained_under_a_strict_policy(sandbox: str) -> None:
    """The page names no outside URL, is never cached, and its Content-Security-Policy
    allows exactly its inline script and style (by hash), status fetches from its own
    origin, and nothing else."""
    proxy = await serve(config(sandbox))
    try:
        async with aiohttp.ClientSession() as client, client.get(f"{proxy.url}/-/") as answer:
            assert answer.status == 200
            headers = answer.headers
            html = await answer.text()
    finally:
        await proxy.stop()
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    directives = (
        part.strip().partition(" ") for part in headers["Content-Security-Policy"].split(";")
    )
    policy = {name: value for name, _, value in directives}
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'"
    (script,) = re.findall(r"<script>(.*?)</script>", html, re.S)
    (style,) = re.findall(r"<style>(.*?)</style>", html, re.S)
    for directive, inline in (("script-src", script), ("style-src", style)):
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert policy[directive] == f"'sha256-{digest}'"
    assert "unsafe" not in headers["Content-Security-Policy"]
    assert re.findall(r"https?:|//[a-z0-9]", html, re.I) == []
    assert re.findall(r"""(?:src|href)\s*=\s*["'](?!data:)""", html) == []
    assert "innerHTML" not in script


async def test_a_group_page_shows_every_worker(sandbox: str, tmp_path: Path) -> None:
    """Under serve --workers 2 the page draws the group's /-/status: both workers up, each
    one's routes and tokens, and the errors of all of them."""
    routes = tmp_path / "routes.toml"
    routes.write_text(config(sandbox))
    proxy = await start_proxy(routes, "--workers", "2")
    try:
        async with aiohttp.ClientSession() as client, client.get(f"{proxy.url}/nowhere") as answer:
            assert answer.status == 404
        dom = await dump_dom(f"{proxy.url}/-/", tmp_path / "profile")
    finally:
        await proxy.stop()
    shown = cells(dom)
    assert (shown["worker.0.up"], shown["worker.1.up"]) == ("yes", "yes")
    assert "Worker 0 (pid" in dom
    assert "Worker 1 (pid" in dom
    assert dom.count(f'data-key="route./travtus.upstream">{sandbox}/travtus<') == 2
    assert shown["error.0.error"] == "no_route"


def test_recent_errors_keep_the_newest_few_and_nothing_of_the_request() -> None:
    """The ring keeps the last ``kept`` errors, newest first, as time, route, status and
    code only."""
    now = [1_800_000_000.0]
    ring = RecentErrors(kept=3, clock=lambda: now[0])
    for i in range(5):
        now[0] += 1
        ring.note(f"/r{i}", 400 + i, f"code_{i}")
    seen = ring.snapshot()
    assert [e["route"] for e in seen] == ["/r4", "/r3", "/r2"]
    assert seen[0] == {"time": 1_800_000_005.0, "route": "/r4", "status": 404, "error": "code_4"}
