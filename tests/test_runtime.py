"""What a Runtime keeps across a reload, per-client credentials with their own limits, and
what the proxy counts and shows for requests it answers itself."""

from __future__ import annotations

import aiohttp
import pytest

from proxy import config as config_module
from proxy.access import is_loopback

from .conftest import ProxyFactory, Scripted, get, route

A_KEY = "client-a-key-0123456789"
B_KEY = "client-b-key-0123456789"


def _auth(up: Scripted, name: str, extra: str = "") -> str:
    return (
        f'[auth.{name}]\ntype = "client_credentials"\ntoken_url = "{up.url}/token"\n'
        f'client_id = "id-{name}"\nclient_secret = "secret-{name}"\n{extra}\n'
    )


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


ONE_PER_MINUTE = "rate_limit = { rate = 1, per = 60, max_wait = 0 }"


async def test_client_with_its_own_auth_takes_that_auth_tables_limit(
    scripted: Scripted, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    """A client whose requests use another auth table count against that table's limit,
    not the default table's, so other clients keep their share."""
    proxy = await make_proxy(
        route(scripted, 'auth = "shared"')
        + _auth(scripted, "shared", ONE_PER_MINUTE)
        + _auth(scripted, "own", ONE_PER_MINUTE)
        + f'[clients.a]\nkey = "{A_KEY}"\nauth = {{ "/api" = "own" }}\n'
        + f'[clients.b]\nkey = "{B_KEY}"\n'
    )
    a, b = {"X-Proxy-Key": A_KEY}, {"X-Proxy-Key": B_KEY}
    assert (await get(client, f"{proxy}/api/1", headers=a)).status == 200
    assert (await get(client, f"{proxy}/api/2", headers=b)).status == 200
    refused = await get(client, f"{proxy}/api/3", headers=a)
    assert refused.status == 429
    assert refused.headers["X-Proxy-Error"] == "rate_limited"
    assert len(scripted.arrivals) == 2
    async with client.get(f"{proxy}/-/status") as answer:
        status = await answer.json()
    assert status["clients"]["a"]["own_auth"] == {"/api": "own"}
    assert status["clients"]["b"]["own_auth"] == {}


async def test_reload_keeps_a_spent_limit_and_an_upstream_pause(
    scripted: Scripted, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    """A reload that leaves a limit or a route unchanged neither refills the bucket nor
    forgets that the upstream asked the proxy to wait."""
    toml = route(scripted, ONE_PER_MINUTE, "/limited") + route(
        scripted, "retry = { attempts = 1, max_wait = 1 }", "/paused"
    )
    proxy = await make_proxy.serve(toml)
    assert (await get(client, f"{proxy.url}/limited/1")).status == 200
    scripted.script = [(429, {"Retry-After": "60"})]
    assert (await get(client, f"{proxy.url}/paused/1")).status == 429
    before = len(scripted.arrivals)
    proxy.state.reload(config_module.loads(toml, {}))
    for path in ("/limited/2", "/paused/2"):
        refused = await get(client, f"{proxy.url}{path}")
        assert refused.status == 429, path
        assert refused.headers["X-Proxy-Error"] == "rate_limited", path
    assert len(scripted.arrivals) == before
    async with client.get(f"{proxy.url}/-/status") as answer:
        status = await answer.json()
    assert status["routes"]["/paused"]["cooldown"]["paused"] is True
    assert status["state"] == {"backend": "local", "up": True}


async def test_reload_with_a_changed_limit_starts_it_afresh(
    scripted: Scripted, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    """A limit whose settings changed is a new limit: the new promise starts now."""
    proxy = await make_proxy.serve(route(scripted, ONE_PER_MINUTE))
    assert (await get(client, f"{proxy.url}/api/1")).status == 200
    assert (await get(client, f"{proxy.url}/api/2")).status == 429
    proxy.state.reload(
        config_module.loads(route(scripted, "rate_limit = { rate = 2, per = 60, max_wait = 0 }"))
    )
    assert (await get(client, f"{proxy.url}/api/3")).status == 200


async def test_attempts_are_counted_when_a_retry_is_refused_by_the_limit(
    scripted: Scripted, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    """An exchange that ends in our 429 after reaching the upstream still counts the
    attempt it sent."""
    proxy = await make_proxy(route(scripted, ONE_PER_MINUTE + "\nretry = { backoff = 0.01 }"))
    scripted.script = [(429, {})]
    refused = await get(client, f"{proxy}/api/x")
    assert refused.status == 429
    assert len(scripted.arrivals) == 1
    async with client.get(f"{proxy}/-/metrics") as answer:
        text = await answer.text()
    assert _sample(text, "proxy_upstream_attempts_total", route="/api") == 1


async def test_own_endpoints_are_counted_and_logged_as_requests(
    scripted: Scripted, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    """Health checks and scrapes are requests too: they appear in the request metrics."""
    proxy = await make_proxy(route(scripted))
    for _ in range(3):
        assert (await get(client, f"{proxy}/-/health")).status == 200
    async with client.get(f"{proxy}/-/metrics") as answer:
        text = await answer.text()
    count = _sample(text, "proxy_requests_total", route="/-/", method="GET", status_class="2xx")
    assert count == 3


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.2"])
async def test_loopback_admin_access_admits_the_whole_loopback_range(
    scripted: Scripted, make_proxy: ProxyFactory, source: str
) -> None:
    """admin_access = "loopback" means this host, all of 127.0.0.0/8, not one address."""
    proxy = await make_proxy('[server]\nadmin_access = "loopback"\n' + route(scripted))
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        answer = await get(session, f"{proxy}/-/status")
    assert answer.status == 200


@pytest.mark.parametrize(
    ("remote", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("::ffff:127.0.0.5", True),
        ("10.1.2.3", False),
        ("::ffff:10.1.2.3", False),
        ("not-an-address", False),
        (None, False),
    ],
)
def test_loopback_rule_covers_every_loopback_form(remote: str | None, loopback: bool) -> None:
    """Peers are judged by address class, in every form the server may report them."""
    assert is_loopback(remote) is loopback
