"""Credentials end to end: a real proxy in front of the vendor sandbox, over real sockets."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer
from structlog.testing import capture_logs

from proxy.sandbox import SandboxSettings, build_sandbox_app

from .conftest import LEAK_WATCH, ProxyFactory
from .processes import start_proxy

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = (ROOT / "demo" / "routes.toml").read_text()


class Sandbox:
    def __init__(self, url: str, client: aiohttp.ClientSession) -> None:
        self.url = url
        self._client = client

    async def control(self, **knobs: Any) -> dict[str, Any]:
        async with self._client.post(f"{self.url}/-/sandbox/control", json=knobs) as r:
            assert r.status == 200, await r.text()
            result: dict[str, Any] = await r.json()
            return result

    async def issued_tokens(self) -> set[str]:
        """Every bearer token the vendors saw, for the end-of-run log scan."""
        return {
            value.split(" ", 1)[1]
            for entry in await self.log()
            for name, value in entry.get("headers") or []
            if name.lower() == "authorization" and value.lower().startswith("bearer ")
        }

    async def refresh_tokens(self) -> set[str]:
        """Every refresh token presented in a refresh_token grant, for the same scan."""
        return {
            entry["fields"]["refresh_token"]
            for entry in await self.log(kind="token")
            if entry["grant_type"] == "refresh_token"
            and (entry["fields"] or {}).get("refresh_token")
        }

    async def log(self, vendor: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        async with self._client.get(f"{self.url}/-/sandbox/log") as r:
            entries: list[dict[str, Any]] = (await r.json())["entries"]
        return [
            e
            for e in entries
            if (vendor is None or e["vendor"] == vendor) and (kind is None or e["kind"] == kind)
        ]


@pytest.fixture
async def sandbox(aiohttp_server: AiohttpServer) -> AsyncIterator[Sandbox]:
    server = await aiohttp_server(build_sandbox_app(SandboxSettings()), host="127.0.0.1")
    async with aiohttp.ClientSession() as client:
        box = Sandbox(f"http://127.0.0.1:{server.port}", client)
        yield box
        LEAK_WATCH.update(await box.issued_tokens())
        LEAK_WATCH.update(await box.refresh_tokens())


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


StartProxy = Callable[..., Awaitable[str]]


@pytest.fixture
def vendor_proxy(sandbox: Sandbox, make_proxy: ProxyFactory) -> StartProxy:
    """The demo config pointed at this test's sandbox, with extra lines per auth table."""

    async def start(replace: dict[str, str] | None = None, **extra: str) -> str:
        text = DEMO_CONFIG
        for old, new in (replace or {}).items():
            assert old in text
            text = text.replace(old, new)
        for name, lines in extra.items():
            text = text.replace(f"[auth.{name}]\n", f"[auth.{name}]\n{lines}\n")
        return await make_proxy(text, {"SANDBOX_URL": sandbox.url})

    return start


async def wait_ready(client: aiohttp.ClientSession, proxy: str, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while True:
            async with client.get(f"{proxy}/-/ready") as r:
                if r.status == 200:
                    return
            await asyncio.sleep(0.05)


CALLS = {
    "travtus": ("POST", "/travtus/messages/", {"to": "+15550100", "body": "hi"}),
    "travis": ("GET", "/travis/api/v1/road-events", None),
    "travelyzer": ("GET", "/travelyzer/v1/geocoding/forward?query=Berlin", None),
}


async def call(
    client: aiohttp.ClientSession, proxy: str, vendor: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    method, path, body = CALLS[vendor]
    async with client.request(method, f"{proxy}{path}", json=body, headers=headers) as r:
        await r.read()
        return r.status, dict(r.headers)


async def scrape(client: aiohttp.ClientSession, proxy: str) -> str:
    async with client.get(f"{proxy}/-/metrics") as r:
        assert r.status == 200
        return await r.text()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition (0 when absent), labels in any order."""
    for found in re.finditer(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", text, re.M):
        if dict(re.findall(r'(\w+)="([^"]*)"', found.group(1))) == labels:
            return float(found.group(2))
    return 0.0


EXPECTED_FIELDS = {
    "travtus": {
        "grant_type": "client_credentials",
        "client_id": "sandbox-travtus-client",
        "client_secret": "sandbox-travtus-secret",
    },
    "travis": {
        "grant_type": "password",
        "client_id": "travis-portal",
        "client_secret": "sandbox-travis-secret",
        "username": "driver@example.com",
        "password": "sandbox-travis-password",
        "scope": "openid",
    },
    "travelyzer": {
        "apiKey": "sandbox-travelyzer-key",
        "apiSecret": "sandbox-travelyzer-secret",
        "expiresIn": "24h",
    },
}


@pytest.mark.parametrize("vendor", sorted(CALLS))
async def test_each_scheme_sends_exactly_the_documented_fields(
    sandbox: Sandbox, vendor_proxy: StartProxy, client: aiohttp.ClientSession, vendor: str
) -> None:
    """Token requests carry the vendor's documented fields and encoding, nothing else."""
    proxy = await vendor_proxy()
    status, _ = await call(client, proxy, vendor, {"Authorization": "Bearer client-own"})
    assert status in (200, 201)
    [token_request] = await sandbox.log(vendor, "token")
    assert token_request["fields"] == EXPECTED_FIELDS[vendor]
    expected_type = (
        "application/json" if vendor == "travelyzer" else ("application/x-www-form-urlencoded")
    )
    assert token_request["content_type"].startswith(expected_type)
    assert token_request["basic_auth"] is None
    [api_request] = await sandbox.log(vendor, "api")
    auth_headers = [v for k, v in api_request["headers"] if k.lower() == "authorization"]
    assert len(auth_headers) == 1
    assert auth_headers[0].startswith("Bearer ey")  # the issuer's JWT, not the client's
    assert api_request["token_expired"] is False


async def test_basic_client_auth_and_extra_params(
    sandbox: Sandbox, vendor_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """client_auth = "basic" moves id and secret to HTTP Basic; params ride along."""
    proxy = await vendor_proxy(
        travtus='client_auth = "basic"\nparams = { audience = "messages", resource = "r1" }'
    )
    status, _ = await call(client, proxy, "travtus")
    assert status == 201
    [token_request] = await sandbox.log("travtus", "token")
    assert token_request["basic_auth"] == ["sandbox-travtus-client", "sandbox-travtus-secret"]
    assert token_request["fields"] == {
        "grant_type": "client_credentials",
        "audience": "messages",
        "resource": "r1",
    }


async def test_cold_burst_makes_one_token_request_per_auth(
    sandbox: Sandbox, vendor_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """200 concurrent requests on a cold proxy cause exactly one token request per vendor."""
    await sandbox.control(
        latency={"travtus_token": 0.3, "travis_token": 0.3, "travelyzer_token": 0.3}
    )
    proxy = await vendor_proxy()
    vendors = sorted(CALLS) * 67
    results = await asyncio.gather(*(call(client, proxy, v) for v in vendors[:200]))
    assert {status for status, _ in results} <= {200, 201}
    for vendor in CALLS:
        assert len(await sandbox.log(vendor, "token")) == 1
    metrics = await scrape(client, proxy)
    for auth in CALLS:
        # The requests that found the one token request under way are counted as waiting.
        assert sample(metrics, "proxy_token_single_flight_waits_total", auth=auth) > 0, auth
        assert sample(metrics, "proxy_token_fetches_total", auth=auth, outcome="ok") == 1


async def test_short_tokens_are_renewed_ahead_under_steady_traffic(
    sandbox: Sandbox, vendor_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """Tokens of 2-3 s are renewed before they expire: no client error, no stale token seen."""
    await sandbox.control(token_lifetime={"travtus": 2, "travis": 3, "travelyzer": 2})
    proxy = await vendor_proxy()
    await wait_ready(client, proxy)
    statuses: list[int] = []
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline:
        batch = await asyncio.gather(*(call(client, proxy, v) for v in CALLS))
        statuses.extend(status for status, _ in batch)
        await asyncio.sleep(0.05)
    assert set(statuses) <= {200, 201}
    api = await sandbox.log(kind="api")
    assert len(api) >= 60
    assert [e for e in api if e["status"] == 401 or e["token_expired"]] == []
    assert min(e["token_remaining"] for e in api) > 0
    # One snapshot of the token requests: the proxy keeps renewing in the background, so
    # two reads of the log could each see a different number of renewals.
    token_log = await sandbox.log(kind="token")
    for vendor in CALLS:
        fetches = [e for e in token_log if e["vendor"] == vendor]
        assert 3 <= len(fetches) <= 8, (vendor, len(fetches))
    travis = [e for e in token_log if e["vendor"] == "travis"]
    grants = [e["grant_type"] for e in travis]
    assert grants[0] == "password"
    assert set(grants[1:]) == {"refresh_token"}
    # The configured scope goes with every grant, refreshes included: some issuers
    # re-scope a refresh that omits it.
    assert {(e["fields"] or {}).get("scope") for e in travis} == {"openid"}
    # Rotation: each renewal presented a different refresh token (the one the renewal
    # before it was given), never one twice.
    presented = {e["fields"]["refresh_token"] for e in travis if e["grant_type"] == "refresh_token"}
    assert len(presented) == len(grants) - 1
    LEAK_WATCH.update(presented)  # the end-of-run log scan looks for these too


async def test_refused_refresh_token_falls_back_to_password(
    sandbox: Sandbox, vendor_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """After the IdP refuses the refresh token (invalid_grant), the password grant renews."""
    await sandbox.control(token_lifetime={"travis": 2})
    proxy = await vendor_proxy()
    await wait_ready(client, proxy)
    await sandbox.control(revoke_refresh=True)
    async with asyncio.timeout(10):
        while len(await sandbox.log("travis", "token")) < 3:
            await asyncio.sleep(0.1)
    fetches = await sandbox.log("travis", "token")
    assert [(e["grant_type"], e["status"]) for e in fetches[:3]] == [
        ("password", 200),
        ("refresh_token", 400),
        ("password", 200),
    ]
    # The refused refresh token is a credential too: the end-of-run log scan looks for it.
    refused = fetches[1]["fields"]["refresh_token"]
    assert refused.count(".") == 2  # the issuer's JWT, as it was given to the proxy
    assert refused in await sandbox.refresh_tokens()
    LEAK_WATCH.add(refused)
    status, _ = await call(client, proxy, "travis")
    assert status == 200


async def test_upstream_401_refetches_and_replays_once(
    sandbox: Sandbox, vendor_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """A revoked token is replaced and the request replayed with the same body."""
    proxy = await vendor_proxy()
    await wait_ready(client, proxy)
    await sandbox.control(revoke=["travtus"])
    status, _ = await call(client, proxy, "travtus")
    assert status == 201
    api = await sandbox.log("travtus", "api")
    assert [e["status"] for e in api] == [401, 201]
    assert len(await sandbox.log("travtus", "token")) == 2


async def test_second_401_passes_through(
    sandbox: Sandbox, vendor_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """When the fresh token is refused too, the client gets the upstream's 401."""
    proxy = await vendor_proxy()
    await wait_ready(client, proxy)
    await sandbox.control(inject=[{"target": "travis_api", "status": 401, "count": 2}])
    status, headers = await call(client, proxy, "travis")
    assert status == 401
    assert "X-Proxy-Error" not in headers
    assert [e["status"] for e in await sandbox.log("travis", "api")] == [401, 401]


async def test_token_endpoint_down_fails_fast_and_recovers(
    sandbox: Sandbox, vendor_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """With the issuer down: quick 503 token_unavailable, few token attempts, then recovery."""
    await sandbox.control(inject=[{"target": "travelyzer_token", "status": 503, "count": -1}])
    proxy = await vendor_proxy(travelyzer="fetch_retry = { backoff = 0.2, max_backoff = 0.8 }")
    started = time.monotonic()
    for _ in range(20):
        status, headers = await call(client, proxy, "travelyzer")
        assert status == 503
        assert headers["X-Proxy-Error"] == "token_unavailable"
        assert "Retry-After" in headers
    async with client.get(f"{proxy}/-/ready") as r:
        assert r.status == 503
        assert (await r.json())["failing"] == ["travelyzer"]
    await asyncio.sleep(1.5)
    elapsed = time.monotonic() - started
    attempts = len(await sandbox.log("travelyzer", "token"))
    # Backoff from 0.2 s doubling to 0.8 s (at least half of each): far fewer than the
    # 20 requests, and no more than the schedule allows in the elapsed time.
    assert 2 <= attempts <= 2 + elapsed / 0.1
    assert await sandbox.log("travelyzer", "api") == []
    await sandbox.control(clear_inject=True)
    await wait_ready(client, proxy, timeout=5)
    status, _ = await call(client, proxy, "travelyzer")
    assert status == 200


async def test_hanging_token_endpoint_answers_503_quickly(
    sandbox: Sandbox,
    vendor_proxy: StartProxy,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An issuer that accepts the token request and never answers costs each client a
    bounded wait, not the token request's read timeout, and is asked only once."""
    monkeypatch.setattr("proxy.auth.manager.MAX_FETCH_WAIT", 0.5)
    await sandbox.control(latency={"travelyzer_token": 30})
    proxy = await vendor_proxy()
    for _ in range(3):
        started = time.monotonic()
        status, headers = await call(client, proxy, "travelyzer")
        assert time.monotonic() - started < 2.0
        assert status == 503
        assert headers["X-Proxy-Error"] == "token_unavailable"
    assert len(await sandbox.log("travelyzer", "token")) == 1
    assert await sandbox.log("travelyzer", "api") == []


async def test_wrong_credentials_are_reported_and_not_hammered(
    sandbox: Sandbox, vendor_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """invalid_client shows in /-/ready and the 503, and is not retried within the breaker."""
    with capture_logs() as events:
        proxy = await vendor_proxy(
            travis="fetch_retry = { rejected_backoff = 30 }",
            replace={'client_secret = "sandbox-travis-secret"': 'client_secret = "wrong"'},
        )
        async with asyncio.timeout(5):
            while not await sandbox.log("travis", "token"):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
    failures = [e for e in events if e["event"] == "token_fetch_failed"]
    assert [(e["auth"], e["reason"], e["status"], e["log_level"]) for e in failures] == [
        ("travis", "invalid_client", 401, "error")
    ]
    assert "wrong" not in repr(events)
    for _ in range(10):
        status, headers = await call(client, proxy, "travis")
        assert status == 503
        assert headers["X-Proxy-Error"] == "token_unavailable"
        assert int(headers["Retry-After"]) >= 25
    async with client.get(f"{proxy}/-/ready") as r:
        assert r.status == 503
        ready = await r.json()
    assert ready["failing"] == ["travis"]
    assert ready["auth"]["travis"]["last_outcome"] == "invalid_client"
    assert ready["auth"]["travtus"]["ready"] is True
    assert "wrong" not in repr(ready)
    assert len(await sandbox.log("travis", "token")) == 1


async def test_token_rate_caps_our_token_requests(
    sandbox: Sandbox, vendor_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """However often tokens are refused, token requests stay within token_rate."""
    proxy = await vendor_proxy(
        replace={"token_rate = { rate = 100, per = 60 }": "token_rate = { rate = 3, per = 60 }"}
    )
    await wait_ready(client, proxy)
    for _ in range(8):
        await sandbox.control(revoke=["travelyzer"])
        await call(client, proxy, "travelyzer")
        await asyncio.sleep(1.05)  # past the 1 s guard against 401 storms
    assert len(await sandbox.log("travelyzer", "token")) == 3


async def test_sandbox_429s_are_retried_after_retry_after(
    sandbox: Sandbox, vendor_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """The vendor's 429 with Retry-After is waited out and retried; the client sees success."""
    proxy = await vendor_proxy()
    await wait_ready(client, proxy)
    await sandbox.control(
        inject=[{"target": "travtus_api", "status": 429, "count": 2, "retry_after": 1}]
    )
    status, headers = await call(client, proxy, "travtus")
    assert status == 201
    assert headers["X-Proxy-Attempts"] == "3"
    api = await sandbox.log("travtus", "api")
    assert [e["status"] for e in api] == [429, 429, 201]
    assert api[1]["time"] - api[0]["time"] >= 1.0
    assert api[2]["time"] - api[1]["time"] >= 1.0


async def test_token_metrics_status_and_ready_show_state_never_secrets(
    sandbox: Sandbox, vendor_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """Token fetches, expiry and age are exported; status and ready hold no credential."""
    proxy = await vendor_proxy()
    await wait_ready(client, proxy)
    for vendor in CALLS:
        await call(client, proxy, vendor)
    async with client.get(f"{proxy}/-/metrics") as r:
        metrics = await r.text()
    for auth in CALLS:
        assert f'proxy_token_fetches_total{{auth="{auth}",outcome="ok"}} 1.0' in metrics
        assert f'proxy_token_age_seconds_count{{auth="{auth}"}} 1.0' in metrics
        assert f'proxy_token_seconds_to_expiry{{auth="{auth}"}}' in metrics
    texts = [metrics]
    for path in ("/-/status", "/-/ready"):
        async with client.get(f"{proxy}{path}") as r:
            texts.append(await r.text())
    tokens = await sandbox.issued_tokens()
    assert tokens
    for secret in (*EXPECTED_FIELDS["travis"].values(), *tokens):
        if len(secret) > 8:
            assert all(secret not in text for text in texts), secret


async def test_token_metrics_move_with_traffic(
    sandbox: Sandbox, vendor_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """Each auth's token fetches and their latency match what the issuer saw, and every
    request's use of a token is observed in the token-age histogram."""
    proxy = await vendor_proxy()
    rounds = 3
    for _ in range(rounds):
        for vendor in CALLS:
            status, _ = await call(client, proxy, vendor)
            assert status in (200, 201)
    metrics = await scrape(client, proxy)
    for auth in CALLS:
        fetched = len(await sandbox.log(auth, "token"))
        assert fetched >= 1
        assert sample(metrics, "proxy_token_fetches_total", auth=auth, outcome="ok") == fetched
        assert sample(metrics, "proxy_token_fetch_duration_seconds_count", auth=auth) == fetched
        assert sample(metrics, "proxy_token_fetch_duration_seconds_sum", auth=auth) > 0
        assert sample(metrics, "proxy_token_age_seconds_count", auth=auth) == rounds, auth


async def test_a_client_can_bring_its_own_identity_for_a_route(
    sandbox: Sandbox, vendor_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """[clients.X] auth = {"/travis" = ...} gives that client's requests their own token."""
    own = DEMO_CONFIG.split("[auth.travis]\n", 1)[1].split("\n\n", 1)[0]
    proxy = await vendor_proxy(
        replace={"[auth.travelyzer]": "[auth.travis_crm]\n" + own + "\n\n[auth.travelyzer]"}
        | {
            '[[routes]]\nprefix = "/travtus"': '[clients.crm]\nkey = "crm-key-0123456789abcdef"'
            '\nauth = { "/travis" = "travis_crm" }\n\n[clients.other]\n'
            'key = "ops-key-0123456789abcdef"\n\n[[routes]]\nprefix = "/travtus"'
        }
    )
    await wait_ready(client, proxy)
    for key in ("crm-key-0123456789abcdef", "ops-key-0123456789abcdef"):
        status, _ = await call(client, proxy, "travis", {"X-Proxy-Key": key})
        assert status == 200
    api = await sandbox.log("travis", "api")
    used = [next(v for k, v in e["headers"] if k.lower() == "authorization") for e in api]
    assert len(set(used)) == 2  # two identities, two token caches
    assert len(await sandbox.log("travis", "token")) == 2


async def test_sighup_keeps_tokens_of_unchanged_auth_tables(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A reload that changes routes but not an auth table fetches no new token for it."""
    config = tmp_path / "routes.toml"
    text = DEMO_CONFIG.replace("${SANDBOX_URL:-http://127.0.0.1:9000}", sandbox.url)
    config.write_text(text)
    proxy = await start_proxy(config)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, proxy.url)
            config.write_text(text.replace('prefix = "/travtus"', 'prefix = "/messages"'))
            proxy.process.send_signal(signal.SIGHUP)
            async with asyncio.timeout(5):
                while (await call_path(session, f"{proxy.url}/messages/messages/")) != 201:
                    await asyncio.sleep(0.05)
    finally:
        assert await proxy.stop() == 0
    for vendor in CALLS:
        assert len(await sandbox.log(vendor, "token")) == 1, vendor


async def call_path(session: aiohttp.ClientSession, url: str) -> int:
    async with session.post(url, json={"to": "+15550100", "body": "hi"}) as r:
        await r.read()
        return r.status
