"""The access log tells what the client got: bytes of the proxy's own answers, the status
an answer cut by shutdown really had, no upstream time when nothing went upstream, readable
console lines, probes left out on request, and the debug lines an operator needs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp

from .conftest import ProxyFactory, Upstream
from .processes import ProxyProcess, start_proxy

KEY = "crm-key-0123456789abcdef"


def routes(up: Upstream, server: str = "", extra: str = "") -> str:
    return f'[server]\n{server}\n[[routes]]\nprefix = "/v"\nupstream = "{up.url}"\n{extra}\n'


def line_for(lines: list[dict[str, Any]], method: str, path: str) -> dict[str, Any]:
    found = [line for line in lines if (line["method"], line["path"]) == (method, path)]
    assert len(found) == 1, lines
    return found[0]


async def test_the_proxys_own_answers_count_their_bytes_and_no_upstream_time(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """bytes_out is the body the client got from the proxy itself (errors, /-/ answers;
    none for HEAD), and upstream_ms is null unless something was sent upstream."""
    proxy = await make_proxy.serve(
        routes(upstream, extra="rate_limit = { rate = 1, per = 60, max_wait = 0 }")
        + f'[clients.crm]\nkey = "{KEY}"\n'
    )
    got: dict[tuple[str, str], tuple[int, int, dict[str, str]]] = {}
    async with aiohttp.ClientSession() as client:
        for method, path, key in [
            ("GET", "/v/a", KEY),
            ("GET", "/v/b", KEY),  # 429: the route's one slot is spent
            ("GET", "/v/c", None),  # 401
            ("GET", "/nowhere", KEY),  # 404
            ("GET", "/-/health", None),
            ("HEAD", "/-/health", None),
            ("POST", "/-/ready", None),  # 405
        ]:
            headers = {"X-Proxy-Key": key} if key else {}
            async with client.request(method, f"{proxy.url}{path}", headers=headers) as r:
                got[(method, path)] = (r.status, len(await r.read()), dict(r.headers))
    for (method, path), (status, size, _) in got.items():
        line = line_for(proxy.lines, method, path)
        assert (line["status"], line["bytes_out"]) == (status, size), line
        assert line["remote"] == "127.0.0.1"
    assert [got[("GET", p)][0] for p in ("/v/a", "/v/b", "/v/c", "/nowhere")] == [
        200,
        429,
        401,
        404,
    ]
    assert all(got[k][1] > 0 for k in [("GET", "/v/b"), ("GET", "/v/c"), ("GET", "/-/health")])
    assert isinstance(line_for(proxy.lines, "GET", "/v/a")["upstream_ms"], float)
    for path in ("/v/b", "/v/c", "/nowhere"):
        assert line_for(proxy.lines, "GET", path)["upstream_ms"] is None
    assert "cut" not in line_for(proxy.lines, "GET", "/v/a")


async def test_an_answer_cut_by_shutdown_keeps_its_status(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """When the shutdown grace runs out, an answer under way is logged with the status
    sent and cut=shutdown, one with nothing sent yet as 503: not as 499, which says the
    client hung up."""
    proxy = await make_proxy.serve(routes(upstream), grace=0.3)
    host, port = proxy.address
    # A download the client stops reading: its head is out, its body stalls.
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /v/download?size=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    async with aiohttp.ClientSession() as client:
        waiting = asyncio.ensure_future(client.get(f"{proxy.url}/v/slow?s=5"))
        async with asyncio.timeout(5):
            while len(upstream.seen) < 2:
                await asyncio.sleep(0.01)
        await proxy.stop()
        with contextlib.suppress(aiohttp.ClientError):
            (await waiting).close()
    writer.close()
    download = line_for(proxy.lines, "GET", "/v/download")
    assert (download["status"], download["cut"]) == (200, "shutdown")
    assert download["bytes_out"] > 0
    slow = line_for(proxy.lines, "GET", "/v/slow")
    assert (slow["status"], slow["cut"]) == (503, "shutdown")
    assert isinstance(slow["upstream_ms"], float)  # it was sent: the upstream took that long


async def test_a_client_that_hangs_up_is_499_cut_by_the_client(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """499 stays what it means: the client closed before its answer."""
    proxy = await make_proxy.serve(routes(upstream))
    async with aiohttp.ClientSession() as client:
        try:
            async with asyncio.timeout(0.3):
                await client.get(f"{proxy.url}/v/slow?s=5")
        except TimeoutError:
            pass
    await asyncio.wait_for(upstream.cancelled.wait(), 5)
    async with asyncio.timeout(5):
        while not proxy.lines:
            await asyncio.sleep(0.01)
    line = line_for(proxy.lines, "GET", "/v/slow")
    assert (line["status"], line["cut"]) == (499, "client")


async def test_probes_can_be_left_out_of_the_access_log(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """server.access_log_probes = false: /-/health and /-/ready write no access line but
    are still counted; other /-/ endpoints and routes are logged."""
    proxy = await make_proxy.serve(routes(upstream, server="access_log_probes = false"))
    async with aiohttp.ClientSession() as client:
        for path in ("/-/health", "/-/ready", "/-/health?x", "/v/a", "/-/metrics"):
            async with client.get(f"{proxy.url}{path}") as r:
                assert r.status == 200
                text = await r.text()
    assert [line["path"] for line in proxy.lines] == ["/v/a", "/-/metrics"]
    samples = {
        found.group(1): float(found.group(2))
        for found in re.finditer(r"^proxy_requests_total\{([^}]*)\} (\S+)$", text, re.M)
    }
    probes = [v for labels, v in samples.items() if 'route="/-/"' in labels]
    assert probes == [3.0]  # the three probes; /-/metrics counts itself once answered


async def start_console_proxy(config: Path) -> ProxyProcess:
    """start_proxy's subprocess, its start-up line read in console format."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "proxy", "serve", "--config", str(config), "--port", "0"),
        *("--log-format", "console"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(20):
        while "proxy_started" not in (lines or [""])[-1]:
            lines.append((await process.stdout.readline()).decode().rstrip("\n"))
    found = re.search(r"'(http://[^']+)'", lines[-1])
    assert found is not None, lines
    return ProxyProcess(process, found.group(1), {}, lines)


async def test_console_lines_open_with_status_and_path_and_print_no_none(
    upstream: Upstream, tmp_path: Path
) -> None:
    """--log-format console: an access line reads "200 GET /v/a" first, and a field with
    no value is left out rather than printed as None."""
    config = tmp_path / "routes.toml"
    config.write_text(routes(upstream))
    proxy = await start_console_proxy(config)
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{proxy.url}/v/a?q=1") as r:
                assert r.status == 200
            async with client.get(f"{proxy.url}/nowhere") as r:
                assert r.status == 404
    finally:
        await proxy.stop()
    access = [line for line in proxy.lines if " GET /" in line]
    assert len(access) == 2, proxy.lines
    first, missing = access
    assert first.split("] ", 1)[1].startswith("200 GET /v/a ")
    assert missing.split("] ", 1)[1].startswith("404 GET /nowhere ")
    assert "route=/v" in first
    assert "upstream_status=200" in first
    assert "client=" not in first
    assert "upstream_ms=" not in missing
    assert not [line for line in proxy.lines if "None" in line]


async def test_debug_level_shows_pool_reuse(upstream: Upstream, tmp_path: Path) -> None:
    """--log-level debug: each upstream request says whether it opened a connection or
    reused a pooled one."""
    config = tmp_path / "routes.toml"
    config.write_text(routes(upstream))
    proxy = await start_proxy(config, "--log-level", "debug")
    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(2):
                async with client.get(f"{proxy.url}/v/a") as r:
                    assert r.status == 200
    finally:
        await proxy.stop()
    events = [json.loads(line) for line in proxy.lines if line.startswith("{")]
    pooled = [e for e in events if e["event"] == "upstream_connection"]
    assert [(e["reused"], e["level"]) for e in pooled] == [(False, "debug"), (True, "debug")]
    assert pooled[0]["upstream"] == upstream.url.removeprefix("http://")


async def curl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "curl", "-s", "-i", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    return out.decode()


async def test_curl_sees_405_with_allow_and_401_with_a_challenge(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """A /-/ endpoint asked with the wrong method is 405 naming the methods it takes (not
    404 no_route); a request without a client key is 401 with WWW-Authenticate."""
    proxy = await make_proxy(routes(upstream) + f'[clients.crm]\nkey = "{KEY}"\n')
    wrong = await curl("-X", "POST", f"{proxy}/-/health")
    assert wrong.startswith("HTTP/1.1 405 ")
    assert "\r\nAllow: GET, HEAD\r\n" in wrong
    assert '"error": "method_not_allowed"' in wrong
    assert (await curl(f"{proxy}/-/nothing")).startswith("HTTP/1.1 404 ")
    refused = await curl(f"{proxy}/v/a")
    assert refused.startswith("HTTP/1.1 401 ")
    assert '\r\nWWW-Authenticate: Key realm="proxy", header="X-Proxy-Key"\r\n' in refused
    allowed = await curl("-H", f"X-Proxy-Key: {KEY}", f"{proxy}/v/a")
    assert allowed.startswith("HTTP/1.1 200 ")
