"""Operating the proxy: access logs, metrics, status, access control, signals, workers."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path

import aiohttp
import pytest

from proxy.observe.logs import Redactor

from .conftest import ProxyFactory, Scripted, Upstream, get, route
from .processes import start_proxy

CRM_KEY = "crm-key-0123456789abcdef"
OPS_KEY = "ops-key-0123456789abcdef"


def clients_config(up: Upstream, extra_server: str = "") -> str:
    return (
        f"[server]\n{extra_server}\n"
        f'[[routes]]\nprefix = "/open"\nupstream = "{up.url}"\n'
        f'[[routes]]\nprefix = "/closed"\nupstream = "{up.url}"\n'
        f'[clients.crm]\nkey = "{CRM_KEY}"\nroutes = ["/open"]\n'
        f'[clients.ops]\nkey = "{OPS_KEY}"\n'
    )


async def test_access_log_lines_are_json_with_every_field(
    upstream: Upstream, tmp_path: Path
) -> None:
    """One JSON access line per request, with the documented fields and no query string."""
    config = tmp_path / "routes.toml"
    config.write_text(f'[[routes]]\nprefix = "/v"\nupstream = "{upstream.url}"\n')
    proxy = await start_proxy(config)
    try:
        async with aiohttp.ClientSession() as client:
            async with client.post(
                f"{proxy.url}/v/items?email=a@b.example",
                data=b"12345",
                headers={"X-Request-ID": "req-42"},
            ) as r:
                body = await r.read()
            async with client.get(f"{proxy.url}/nowhere") as r404:
                assert r404.status == 404
    finally:
        await proxy.stop()
    events = [json.loads(line) for line in proxy.lines if line.startswith("{")]
    access = [e for e in events if e["event"] == "access"]
    assert len(access) == 2
    line = access[0]
    assert {
        k: line[k]
        for k in (
            "request_id",
            "method",
            "path",
            "route",
            "status",
            "upstream_status",
            "attempts",
            "retries_429",
            "token_refreshes",
            "bytes_in",
            "bytes_out",
            "remote",
            "client",
        )
    } == {
        "request_id": "req-42",
        "method": "POST",
        "path": "/v/items",
        "route": "/v",
        "status": 200,
        "upstream_status": 200,
        "attempts": 1,
        "retries_429": 0,
        "token_refreshes": 0,
        "bytes_in": 5,
        "bytes_out": len(body),
        "remote": "127.0.0.1",
        "client": None,
    }
    for timing in ("limiter_wait_ms", "upstream_ms", "total_ms"):
        assert isinstance(line[timing], float | int)
    assert line["total_ms"] >= line["upstream_ms"]
    assert "a@b.example" not in json.dumps(events)
    assert access[1]["status"] == 404
    assert access[1]["route"] is None


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition, whatever order its labels come in."""
    for found in re.finditer(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", text, re.M):
        if dict(re.findall(r'(\w+)="([^"]*)"', found.group(1))) == labels:
            return float(found.group(2))
    return 0.0


async def test_metrics_move_with_traffic(
    scripted: Scripted, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    """Request counts, attempts, retries, latency and limiter rejections are exported."""
    proxy = await make_proxy(
        route(
            scripted,
            "rate_limit = { rate = 5, per = 10, max_wait = 0 }\nretry = { backoff = 0.01 }",
        )
    )
    scripted.script = [(200, {}), (200, {}), (200, {}), (429, {"Retry-After": "0"})]
    # 5 slots: three requests take one each, the fourth two (its 429 is retried), and the
    # last two are refused without reaching the upstream (no slot left; after the 429 the
    # route is also paced at its learned rate).
    statuses = [(await get(client, f"{proxy}/api/x")).status for _ in range(6)]
    assert statuses == [200, 200, 200, 200, 429, 429]
    async with client.get(f"{proxy}/-/metrics") as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    assert (
        _sample(text, "proxy_requests_total", route="/api", method="GET", status_class="2xx") == 4
    )
    assert (
        _sample(text, "proxy_requests_total", route="/api", method="GET", status_class="4xx") == 2
    )
    assert _sample(text, "proxy_upstream_attempts_total", route="/api") == 5
    assert _sample(text, "proxy_upstream_retries_total", route="/api") == 1
    assert _sample(text, "proxy_limiter_rejections_total", route="/api") == 2
    assert _sample(text, "proxy_request_duration_seconds_count", route="/api") == 6
    assert "proxy_in_flight_requests 0.0" in text


async def test_upstream_and_limiter_timings_count_each_forwarded_request(
    scripted: Scripted, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    """Upstream latency and limiter waits are observed once per forwarded request, and not
    for requests the limiter refused."""
    proxy = await make_proxy(route(scripted, "rate_limit = { rate = 3, per = 60, max_wait = 0 }"))
    statuses = [(await get(client, f"{proxy}/api/{i}")).status for i in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert len(scripted.arrivals) == 3
    async with client.get(f"{proxy}/-/metrics") as r:
        text = await r.text()
    assert _sample(text, "proxy_upstream_duration_seconds_count", route="/api") == 3
    assert _sample(text, "proxy_limiter_wait_seconds_count", route="/api") == 3
    assert _sample(text, "proxy_upstream_duration_seconds_sum", route="/api") > 0
    assert _sample(text, "proxy_request_duration_seconds_count", route="/api") == 5


async def test_access_control_keys_and_routes(
    upstream: Upstream, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    """No key: 401; a key for a route it may not use: 403; a good key works and is stripped."""
    proxy = await make_proxy(clients_config(upstream))
    cases = [
        ({}, "/open/x", 401, "unauthorized"),
        ({"X-Proxy-Key": "wrong-key-0123456789"}, "/open/x", 401, "unauthorized"),
        ({"X-Proxy-Key": CRM_KEY[:-1]}, "/open/x", 401, "unauthorized"),
        ({"X-Proxy-Key": CRM_KEY}, "/closed/x", 403, "forbidden"),
        ({"X-Proxy-Key": CRM_KEY}, "/open/x", 200, None),
        ({"X-Proxy-Key": OPS_KEY}, "/closed/x", 200, None),
    ]
    for headers, path, status, code in cases:
        async with client.get(f"{proxy}{path}", headers=headers) as r:
            assert r.status == status, (headers, path)
            assert r.headers.get("X-Proxy-Error") == code
    assert len(upstream.seen) == 2
    assert all(seen.header("X-Proxy-Key") is None for seen in upstream.seen)


async def test_allowlist_refuses_other_sources_first(
    upstream: Upstream, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    """A source outside `allow` gets 403 on everything, before keys or routes are looked at."""
    proxy = await make_proxy(clients_config(upstream, 'allow = ["10.0.0.0/8", "::1/128"]'))
    for path in ("/open/x", "/-/health", "/nowhere"):
        async with client.get(f"{proxy}{path}", headers={"X-Proxy-Key": CRM_KEY}) as r:
            assert r.status == 403
            assert r.headers["X-Proxy-Error"] == "forbidden"
    assert upstream.seen == []
    allowed = await make_proxy(clients_config(upstream, 'allow = ["127.0.0.0/8"]'))
    async with client.get(f"{allowed}/open/x", headers={"X-Proxy-Key": CRM_KEY}) as r:
        assert r.status == 200


async def test_admin_endpoints_can_be_restricted_to_a_client(
    upstream: Upstream, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    """admin_access = "client:ops" opens /-/metrics and /-/status to that key only."""
    served = await make_proxy.serve(clients_config(upstream, 'admin_access = "client:ops"'))
    proxy = served.url
    for path in ("/-/metrics", "/-/status"):
        async with client.get(f"{proxy}{path}") as r:
            assert r.status == 403
        async with client.get(f"{proxy}{path}", headers={"X-Proxy-Key": CRM_KEY}) as r:
            assert r.status == 403
        async with client.get(f"{proxy}{path}", headers={"X-Proxy-Key": OPS_KEY}) as r:
            assert r.status == 200
            # Behind admin_access: no shared cache may keep it for the next caller.
            assert r.headers["Cache-Control"] == "no-store"
    async with client.get(f"{proxy}/-/health") as r:
        assert r.status == 200  # liveness stays open for the orchestrator
    # The access lines say whose key came with each admin request.
    admin = [(line["status"], line["client"]) for line in served.lines if line["route"] == "/-/"]
    assert admin[:3] == [(403, None), (403, "crm"), (200, "ops")]
    assert admin[-1] == (200, None)


async def test_per_client_rate_limit(
    upstream: Upstream, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    """A client's own limit applies to it alone."""
    proxy = await make_proxy(
        clients_config(upstream).replace(
            'routes = ["/open"]\n',
            'routes = ["/open"]\nrate_limit = { rate = 1, per = 60, max_wait = 0 }\n',
        )
    )
    crm, ops = {"X-Proxy-Key": CRM_KEY}, {"X-Proxy-Key": OPS_KEY}
    assert (await get(client, f"{proxy}/open/1", headers=crm)).status == 200
    limited = await get(client, f"{proxy}/open/2", headers=crm)
    assert limited.status == 429
    assert limited.headers["X-Proxy-Error"] == "rate_limited"
    assert (await get(client, f"{proxy}/open/3", headers=ops)).status == 200


def test_a_list_with_a_secret_in_it_is_still_a_list_in_the_json_log() -> None:
    """Scrubbing keeps a field's shape: a JSON array stays an array (a log parser
    relies on it), with only the secret replaced."""
    redactor = Redactor(["s3cret-path"])
    event = redactor(
        None, "info", {"event": "x", "routes": ["/a -> http://h/s3cret-path", "/b -> http://h"]}
    )
    assert event["routes"] == ["/a -> http://h/[redacted]", "/b -> http://h"]
    nested = redactor(None, "info", {"event": "x", "d": {"password": "p", "u": ["s3cret-path"]}})
    assert nested["d"] == {"password": "[redacted]", "u": ["[redacted]"]}
    named = redactor(None, "info", {"event": "x", "d": {"api_key": "k-1234", "n": 3}})
    assert named["d"] == {"api_key": "[redacted]", "n": 3}


def test_a_rotated_secret_stays_scrubbed_while_the_old_config_drains() -> None:
    """After a reload that rotated a secret, requests in flight on the old config may
    still log the old one: it stays scrubbed until the next reload."""
    redactor = Redactor(["old-secret-1"])
    redactor.update(["new-secret-2"])
    assert redactor.scrub("a=old-secret-1 b=new-secret-2") == "a=[redacted] b=[redacted]"


def test_redactor_blanks_credential_keys_and_scrubs_values() -> None:
    """Named credentials are blanked; known secrets, bearer values and JWTs are scrubbed."""
    redactor = Redactor(["hunter2-secret"])
    event = redactor(
        None,
        "info",
        {
            "event": "x",
            "client_secret": "anything",
            "Authorization": "Bearer abc",
            "note": "pw=hunter2-secret; Authorization: Bearer abcdefgh12345678",
            "jwt": "token eyJhbGciOi.eyJzdWIiOiJ4In0.c2ln end",
            "headers": [("Authorization", "Basic dXNlcjpwYXNzd29yZA==")],
            "count": 3,
        },
    )
    assert event["client_secret"] == "[redacted]"
    assert event["Authorization"] == "[redacted]"
    assert "hunter2-secret" not in event["note"]
    assert "abcdefgh12345678" not in event["note"]
    assert "eyJ" not in event["jwt"]
    assert "dXNlcjpwYXNzd29yZA" not in str(event["headers"])
    assert event["count"] == 3


async def _status_and_text(client: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with client.get(url) as response:
        return response.status, await response.text()


async def test_sigterm_drains_a_slow_request_then_exits_0(
    upstream: Upstream, tmp_path: Path
) -> None:
    """On SIGTERM the port refuses new connections while a request in flight still gets its
    whole answer, then the process ends."""
    config = tmp_path / "routes.toml"
    # No drain (tests/test_lifecycle.py has it): the listener closes at once.
    config.write_text(
        f'[server]\ndrain_delay = 0\n[[routes]]\nprefix = "/v"\nupstream = "{upstream.url}"\n'
    )
    proxy = await start_proxy(config)
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    try:
        async with aiohttp.ClientSession() as client:
            slow = asyncio.create_task(_status_and_text(client, f"{proxy.url}/v/slow?s=3"))
            async with asyncio.timeout(5):
                while not upstream.seen:
                    await asyncio.sleep(0.01)
            proxy.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(2.5):
                while True:
                    try:
                        _, writer = await asyncio.open_connection(host, int(port))
                    except ConnectionRefusedError:
                        break
                    except ConnectionResetError:
                        continue  # queued for accept as the listener closed: not served
                    writer.close()
                    await asyncio.sleep(0.02)
            assert not slow.done()  # refused while the slow request was still draining
            with pytest.raises(aiohttp.ClientConnectorError):
                await get(client, f"{proxy.url}/v/fast")
            assert await slow == (200, "late")
    finally:
        code = await proxy.stop()
    assert code == 0
    assert [seen.raw_path for seen in upstream.seen] == ["/slow?s=3"]


async def test_requests_in_flight_finish_on_their_config_across_a_reload(
    upstream: Upstream, tmp_path: Path
) -> None:
    """Requests in flight during a SIGHUP reload, sent or waiting for a rate-limit slot,
    are answered by the upstream they started with; requests after it follow the new file."""
    config = tmp_path / "routes.toml"
    config.write_text(
        f'[[routes]]\nprefix = "/v"\nupstream = "{upstream.url}"\n'
        "rate_limit = { rate = 1, per = 2, max_wait = 5 }\n"
    )
    proxy = await start_proxy(config)
    try:
        async with aiohttp.ClientSession() as client:
            slow = asyncio.create_task(_status_and_text(client, f"{proxy.url}/v/slow?s=3"))
            async with asyncio.timeout(5):
                while not upstream.seen:
                    await asyncio.sleep(0.01)
            # The limit's one slot is spent: this one waits in line for about 2 s.
            queued = asyncio.create_task(_status_and_text(client, f"{proxy.url}/v/queued"))
            await asyncio.sleep(0.2)
            config.write_text('[[routes]]\nprefix = "/v"\nupstream = "http://127.0.0.1:1"\n')
            proxy.process.send_signal(signal.SIGHUP)
            assert proxy.process.stdout is not None
            async with asyncio.timeout(2):
                while '"config_reloaded"' not in proxy.lines[-1]:
                    proxy.lines.append((await proxy.process.stdout.readline()).decode().rstrip())
            after = await get(client, f"{proxy.url}/v/after")
            assert after.status == 502
            assert after.headers["X-Proxy-Error"] == "upstream_unreachable"
            assert not slow.done()  # both were still in flight after the reload
            assert not queued.done()
            assert await queued == (200, '{"ok": true}')
            assert await slow == (200, "late")
    finally:
        assert await proxy.stop() == 0
    assert [seen.raw_path for seen in upstream.seen] == ["/slow?s=3", "/queued"]
    assert not upstream.cancelled.is_set()


async def test_sighup_reloads_a_good_file_and_keeps_a_bad_ones_predecessor(
    upstream: Upstream, tmp_path: Path
) -> None:
    """A good file replaces the routes; a bad one is logged and the running config stays."""
    config = tmp_path / "routes.toml"
    config.write_text(f'[[routes]]\nprefix = "/a"\nupstream = "{upstream.url}"\n')
    proxy = await start_proxy(config)
    try:
        async with aiohttp.ClientSession() as client:
            assert (await get(client, f"{proxy.url}/a/x")).status == 200
            config.write_text(f'[[routes]]\nprefix = "/b"\nupstream = "{upstream.url}"\n')
            proxy.process.send_signal(signal.SIGHUP)
            async with asyncio.timeout(5):
                while (await get(client, f"{proxy.url}/b/x")).status != 200:
                    await asyncio.sleep(0.05)
            assert (await get(client, f"{proxy.url}/a/x")).status == 404
            config.write_text('[[routes]]\nprefix = "nope"\n')
            proxy.process.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            assert (await get(client, f"{proxy.url}/b/x")).status == 200
    finally:
        assert await proxy.stop() == 0
    events = [json.loads(line) for line in proxy.lines if line.startswith("{")]
    failed = [e for e in events if e["event"] == "config_reload_failed"]
    assert len(failed) == 1
    assert "routes[0].prefix: must start with '/', got 'nope'" in failed[0]["problems"]
    assert len([e for e in events if e["event"] == "config_reloaded"]) == 1


@pytest.mark.parametrize("workers", [2])
async def test_workers_share_the_port_and_the_combined_limit_holds(
    scripted: Scripted, tmp_path: Path, workers: int
) -> None:
    """--workers 2 serves on one port; each worker gets half the limit, so the sum holds."""
    rate, burst = 20, 4
    config = tmp_path / "routes.toml"
    config.write_text(
        route(scripted, f"rate_limit = {{ rate = {rate}, burst = {burst}, max_wait = 10 }}")
    )
    proxy = await start_proxy(config, "--workers", str(workers))
    try:
        assert proxy.startup["workers"] == workers
        connector = aiohttp.TCPConnector(limit=20, force_close=True)  # spread over workers
        async with aiohttp.ClientSession(connector=connector) as client:
            responses = await asyncio.gather(
                *(get(client, f"{proxy.url}/api/{i}") for i in range(60))
            )
    finally:
        assert await proxy.stop() == 0
    assert {r.status for r in responses} == {200}
    times = sorted(scripted.times())
    for window in (0.5, 1.0):
        most = max(sum(1 for t in times[i:] if t - s <= window) for i, s in enumerate(times))
        assert most <= burst + rate * window + 2, (window, most)
    started = [
        json.loads(line)
        for line in proxy.lines
        if line.startswith("{") and '"worker_started"' in line
    ]
    assert len({event["pid"] for event in started}) == workers
    assert sorted(event["worker"] for event in started) == list(range(workers))


async def test_open_proxy_on_a_public_address_is_warned_about(
    upstream: Upstream, tmp_path: Path
) -> None:
    """Listening beyond loopback with no [clients] logs a warning at start-up."""
    config = tmp_path / "routes.toml"
    config.write_text(f'[[routes]]\nprefix = "/v"\nupstream = "{upstream.url}"\n')
    proxy = await start_proxy(config, "--host", "0.0.0.0")
    code = await proxy.stop()
    assert code == 0
    events = [json.loads(line)["event"] for line in proxy.lines if line.startswith("{")]
    assert "proxy_open" in events
    assert "config_loaded" in events
    quiet = await start_proxy(config)
    await quiet.stop()
    assert not any('"proxy_open"' in line for line in quiet.lines)


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("invalid_client", "invalid_client"),
        ("http_503", "http_5xx"),
        ("our_secret_is_hunter2", "other"),
    ],
)
def test_token_fetch_outcomes_are_a_closed_set_of_labels(reason: str, label: str) -> None:
    """An issuer's error text never becomes a metric label of its own making."""
    from proxy.observe.metrics import Metrics

    metrics = Metrics()
    metrics.token_failed("travis", reason, 0.25)
    text = metrics.exposition().decode()
    assert f'proxy_token_fetches_total{{auth="travis",outcome="{label}"}} 1.0' in text
    assert reason == label or reason not in text
    assert 'proxy_token_fetch_duration_seconds_count{auth="travis"} 1.0' in text


def test_latency_histogram_buckets_are_cumulative_and_inclusive() -> None:
    """A value equal to a bucket bound counts in that bucket (le), and buckets add up."""
    from proxy.observe.metrics import Metrics, RouteMetrics

    metrics = Metrics()
    route = RouteMetrics(metrics, "/api")
    for value in (0.005, 0.2, 90.0):
        route.duration.observe(value)
    text = metrics.exposition().decode()
    assert _sample(text, "proxy_request_duration_seconds_bucket", route="/api", le="0.0025") == 0
    assert _sample(text, "proxy_request_duration_seconds_bucket", route="/api", le="0.005") == 1
    assert _sample(text, "proxy_request_duration_seconds_bucket", route="/api", le="0.25") == 2
    assert _sample(text, "proxy_request_duration_seconds_bucket", route="/api", le="60.0") == 2
    assert _sample(text, "proxy_request_duration_seconds_bucket", route="/api", le="+Inf") == 3
    assert _sample(text, "proxy_request_duration_seconds_count", route="/api") == 3
    assert _sample(text, "proxy_request_duration_seconds_sum", route="/api") == pytest.approx(
        90.205
    )


async def test_every_line_of_a_request_carries_its_request_id(tmp_path: Path) -> None:
    """A warning logged while handling a request has the same request_id as its access line."""
    config = tmp_path / "routes.toml"
    config.write_text('[[routes]]\nprefix = "/v"\nupstream = "http://127.0.0.1:1"\n')
    proxy = await start_proxy(config)
    try:
        async with aiohttp.ClientSession() as client:
            for rid in ("first-req", "second-req"):
                async with client.get(f"{proxy.url}/v/x", headers={"X-Request-ID": rid}) as r:
                    assert r.status == 502
    finally:
        await proxy.stop()
    events = [json.loads(line) for line in proxy.lines if line.startswith("{")]
    pairs = [(e["event"], e.get("request_id")) for e in events if e.get("request_id")]
    assert pairs == [
        ("upstream_unreachable", "first-req"),
        ("access", "first-req"),
        ("upstream_unreachable", "second-req"),
        ("access", "second-req"),
    ]
