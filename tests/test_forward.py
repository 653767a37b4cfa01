"""End-to-end forwarding through a real proxy to a real upstream, both on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import json
import re

import aiohttp
import pytest
from yarl import URL

from .conftest import GZIP_BODY, ProxyFactory, Upstream
from .rawclient import raw_http


def routes(upstream: Upstream, base: str = "", auth: bool = False, read: float = 60) -> str:
    auth_line = 'auth = "vendor"' if auth else ""
    return f"""
[[routes]]
prefix = "/travtus"
upstream = "{upstream.url}{base}"
{auth_line}
timeout = {{ connect = 2, read = {read} }}

[[routes]]
prefix = "/travtus/deep"
upstream = "{upstream.url}/deeper"

[auth.vendor]
type = "client_credentials"
token_url = "{upstream.url}/oauth/token"
client_id = "id"
client_secret = "secret"
"""


def raw_get(target: str, extra: str = "") -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: proxy.test\r\n{extra}Connection: close\r\n\r\n"
    ).encode("latin-1")


@pytest.mark.parametrize(
    ("target", "base", "expected"),
    [
        ("/travtus/messages/?a=1", "", "/messages/?a=1"),
        ("/travtus/messages/?a=1", "/v2", "/v2/messages/?a=1"),
        ("/travtus/a%2Fb/%28x%29?q=%7E&q=2&q=1&&z", "", "/a%2Fb/%28x%29?q=%7E&q=2&q=1&&z"),
        ("/travtus/a%2fb%zz/~x?x=%20+y&y=%2B;z", "/base", "/base/a%2fb%zz/~x?x=%20+y&y=%2B;z"),
        ("/travtus", "/v2", "/v2"),
        ("/travtus", "", "/"),
        ("/travtus/", "/v2", "/v2/"),
        ("/travtus?x=1", "", "/?x=1"),
        ("/travtus/deep/x", "", "/deeper/x"),  # longest prefix wins
        ("/travtus/deeper/x", "", "/deeper/x"),  # whole segments: not /travtus/deep
    ],
)
async def test_path_and_query_reach_upstream_byte_for_byte(
    upstream: Upstream, make_proxy: ProxyFactory, target: str, base: str, expected: str
) -> None:
    """The prefix is swapped for the base path; everything else arrives exactly as sent."""
    proxy = await make_proxy(routes(upstream, base))
    response = await raw_http(proxy, raw_get(target))
    assert response.status == 200
    assert upstream.last.raw_path == expected


@pytest.mark.parametrize("target", ["/travtusX/a", "/Travtus/a", "/nothing", "/", "/-/other"])
async def test_unmatched_paths_get_no_route(
    upstream: Upstream, make_proxy: ProxyFactory, target: str
) -> None:
    """Prefixes match whole, case-sensitive segments; /-/ is never forwarded."""
    proxy = await make_proxy(routes(upstream))
    response = await raw_http(proxy, raw_get(target))
    assert response.status == 404
    assert response.header("X-Proxy-Error") == "no_route"
    body = json.loads(response.body)
    assert body["error"] == "no_route"
    assert body["request_id"] == response.header("X-Request-ID")
    assert upstream.seen == []


@pytest.mark.parametrize(
    "target",
    [
        "/travtus/../x",
        "/travtus/./x",
        "/travtus/%2e%2e/x",
        "/travtus/.%2E/x",
        "/travtus/%2E./x",
        "/travtus/a/..",
        "/travtus/..%2fx",
        "/travtus/x%2F..%2Fy",
        "/travtus/..%5cx",
        "/travtus/..\\x",
        "/travtus/..;/x",
        "/travtus/%252e%252e/x",
        "/./travtus/x",
        "//evil.example/x",
        "http://evil.example/travtus/x",
    ],
)
async def test_dot_segments_and_foreign_targets_are_refused(
    upstream: Upstream, make_proxy: ProxyFactory, target: str
) -> None:
    """Nothing that could climb out of the route's base path, or name another host, leaves."""
    proxy = await make_proxy(routes(upstream, "/base"))
    response = await raw_http(proxy, raw_get(target))
    assert response.status == 400
    assert response.header("X-Proxy-Error") == "bad_request"
    assert upstream.seen == []


async def test_asterisk_target_is_refused_by_the_route_table(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """An asterisk-form target never reaches an upstream: llhttp takes it, and the route
    table refuses any target that is not a path (400)."""
    proxy = await make_proxy(routes(upstream))
    response = await raw_http(proxy, raw_get("*"))
    assert response.status == 400
    assert upstream.seen == []


async def test_dotted_names_that_are_not_dot_segments_pass(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """Files like .well-known or a..b are ordinary segments."""
    proxy = await make_proxy(routes(upstream))
    response = await raw_http(proxy, raw_get("/travtus/.well-known/a..b/x.json"))
    assert response.status == 200
    assert upstream.last.raw_path == "/.well-known/a..b/x.json"


async def test_hop_by_hop_headers_are_dropped_both_ways(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """Connection, the headers it names and the fixed hop-by-hop set never cross the proxy."""
    proxy = await make_proxy(routes(upstream))
    response = await raw_http(
        proxy,
        raw_get(
            "/travtus/hop",
            "Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n"
            "Trailer: X-T\r\nUpgrade: websocket\r\nProxy-Authorization: Basic eDp5\r\n"
            "Connection: X-Client-Hop\r\nX-Client-Hop: 1\r\nX-End-To-End: kept\r\n",
        ),
    )
    seen = upstream.last
    for name in (
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Upgrade",
        "Proxy-Authorization",
        "X-Client-Hop",
    ):
        assert seen.header(name) is None, name
    assert seen.header("X-End-To-End") == "kept"
    assert response.status == 200
    for name in ("X-Secret-Hop", "Keep-Alive", "Proxy-Authenticate", "Trailer", "Upgrade"):
        assert response.header(name) is None, name
    assert response.header("X-Kept") == "yes"


async def test_forwarding_headers_host_and_request_id(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """Host is the upstream's; X-Forwarded-* are ours, not the client's; the id round-trips."""
    proxy = await make_proxy(routes(upstream))
    response = await raw_http(
        proxy,
        raw_get(
            "/travtus/x",
            "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: spoofed\r\nX-Request-ID: abc-123\r\n",
        ),
    )
    seen = upstream.last
    assert seen.all("Host") == [f"127.0.0.1:{upstream.port}"]
    assert seen.all("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.all("X-Forwarded-Proto") == ["http"]
    assert seen.all("X-Forwarded-Host") == ["proxy.test"]
    assert seen.all("X-Request-ID") == ["abc-123"]
    assert response.header("X-Request-ID") == "abc-123"


async def test_request_id_is_generated_when_missing_or_unsafe(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """A client without a usable id gets a fresh one, the same upstream and in the reply."""
    proxy = await make_proxy(routes(upstream))
    for extra in ("", "X-Request-ID: has space\r\n", f"X-Request-ID: {'x' * 200}\r\n"):
        response = await raw_http(proxy, raw_get("/travtus/x", extra))
        generated = response.header("X-Request-ID")
        assert generated is not None
        assert len(generated) == 32
        assert upstream.last.header("X-Request-ID") == generated


async def test_generated_request_ids_stay_unique_past_each_batch_of_randomness(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """Ids come from randomness drawn 256 at a time: 600 requests (over two refills) get
    600 different 128-bit ids."""
    proxy = await make_proxy(routes(upstream))
    ids = set()
    async with aiohttp.ClientSession() as client:
        for _ in range(600):
            async with client.get(f"{proxy}/travtus/x") as response:
                ids.add(response.headers["X-Request-ID"])
    assert len(ids) == 600
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


async def test_no_automatic_headers_are_added(upstream: Upstream, make_proxy: ProxyFactory) -> None:
    """The upstream sees the client's headers, not aiohttp's User-Agent or Accept-Encoding."""
    proxy = await make_proxy(routes(upstream))
    request = b"POST /travtus/x HTTP/1.1\r\nHost: p\r\nContent-Length: 3\r\nConnection: close\r\n"
    await raw_http(proxy, request + b"\r\nabc")
    seen = upstream.last
    for name in ("User-Agent", "Accept", "Accept-Encoding", "Content-Type"):
        assert seen.header(name) is None, name
    assert seen.body == b"abc"
    assert seen.header("Content-Length") == "3"


@pytest.mark.parametrize("auth", [True, False])
async def test_client_authorization_only_passes_on_routes_without_auth(
    upstream: Upstream, make_proxy: ProxyFactory, auth: bool
) -> None:
    """The client's own credential is replaced on a route with auth, passed on one without."""
    proxy = await make_proxy(routes(upstream, auth=auth))
    await raw_http(proxy, raw_get("/travtus/x", "Authorization: Bearer client-own\r\n"))
    seen = upstream.last.all("Authorization")
    assert seen == (["Bearer upstream-test-token"] if auth else ["Bearer client-own"])


async def test_redirects_are_passed_back_not_followed(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """A 302 reaches the client as sent; the proxy itself goes nowhere."""
    proxy = await make_proxy(routes(upstream))
    response = await raw_http(proxy, raw_get("/travtus/redirect"))
    assert response.status == 302
    assert response.header("Location") == "http://127.0.0.1:1/elsewhere"
    assert len(upstream.seen) == 1


async def test_gzip_passes_through_untouched_both_ways(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """Compressed bodies are neither inflated nor relabelled, up or down."""
    proxy = await make_proxy(routes(upstream))
    payload = gzip.compress(b"upload " * 1000)
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        async with client.post(
            f"{proxy}/travtus/up", data=payload, headers={"Content-Encoding": "gzip"}
        ) as response:
            assert response.status == 200
        assert upstream.last.body == payload
        assert upstream.last.header("Content-Encoding") == "gzip"
        async with client.get(
            f"{proxy}/travtus/gzip", headers={"Accept-Encoding": "gzip"}
        ) as response:
            body = await response.read()
            assert response.headers["Content-Encoding"] == "gzip"
            assert response.headers["Content-Length"] == str(len(GZIP_BODY))
    assert body == GZIP_BODY


async def test_chunked_request_body_streams_upstream(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """A chunked upload arrives whole, re-framed by the proxy."""
    proxy = await make_proxy(routes(upstream))
    response = await raw_http(
        proxy,
        (
            b"POST /travtus/x HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        ),
    )
    assert response.status == 200
    assert upstream.last.body == b"hello world"


async def test_head_204_304_and_vendor_errors_pass_through(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """Bodiless responses stay bodiless; an upstream error is the upstream's, not ours."""
    proxy = await make_proxy(routes(upstream))
    async with aiohttp.ClientSession() as client:
        async with client.head(f"{proxy}/travtus/download?size=1234&framing=length") as r:
            assert r.status == 200
            assert r.headers["Content-Length"] == "1234"
            assert await r.read() == b""
        async with client.get(f"{proxy}/travtus/status/204") as r:
            assert r.status == 204
            assert await r.read() == b""
        async with client.get(f"{proxy}/travtus/status/304") as r:
            assert r.status == 304
            assert r.headers["ETag"] == '"v1"'
        async with client.get(f"{proxy}/travtus/status/418") as r:
            assert r.status == 418
            assert "X-Proxy-Error" not in r.headers
            assert r.headers["X-Vendor"] == "teapot"
            assert await r.json() == {"vendor": "error"}


async def test_repeated_set_cookie_kept_and_not_stored(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """Both Set-Cookie lines reach the client; no cookie is replayed to the next request."""
    proxy = await make_proxy(routes(upstream).replace("127.0.0.1", "localhost", 1))
    response = await raw_http(proxy, raw_get("/travtus/cookies"))
    assert [v for k, v in response.headers if k == "set-cookie"] == ["a=1; Path=/", "b=2; Path=/"]
    await raw_http(proxy, raw_get("/travtus/after"))
    assert upstream.last.header("Cookie") is None


async def test_unreachable_upstream_is_502(make_proxy: ProxyFactory) -> None:
    """A refused connection becomes the proxy's own JSON error."""
    proxy = await make_proxy('[[routes]]\nprefix = "/x"\nupstream = "http://127.0.0.1:1"\n')
    async with aiohttp.ClientSession() as client, client.get(f"{proxy}/x/y") as r:
        assert r.status == 502
        assert r.headers["X-Proxy-Error"] == "upstream_unreachable"
        body = await r.json()
    assert body["error"] == "upstream_unreachable"
    assert body["request_id"] == r.headers["X-Request-ID"]


async def test_slow_upstream_is_504(upstream: Upstream, make_proxy: ProxyFactory) -> None:
    """An upstream silent past the route's read timeout becomes upstream_timeout."""
    proxy = await make_proxy(routes(upstream, read=0.3))
    async with aiohttp.ClientSession() as client, client.get(f"{proxy}/travtus/slow?s=3") as r:
        assert r.status == 504
        assert r.headers["X-Proxy-Error"] == "upstream_timeout"


async def test_client_hanging_up_cancels_the_upstream_request(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """When the client leaves, the proxy drops its upstream request instead of waiting on."""
    proxy = await make_proxy(routes(upstream))
    host, port = proxy.removeprefix("http://").rsplit(":", 1)
    _reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /travtus/slow?s=30 HTTP/1.1\r\nHost: p\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(10):
        while not upstream.seen:
            await asyncio.sleep(0.01)
    writer.close()
    await asyncio.wait_for(upstream.cancelled.wait(), 10)


async def test_upstream_dying_mid_body_aborts_the_client_connection(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """A cut upstream body is never presented to the client as complete."""
    proxy = await make_proxy(routes(upstream))
    async with aiohttp.ClientSession() as client, client.get(f"{proxy}/travtus/broken") as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


async def test_health_and_expect_continue(upstream: Upstream, make_proxy: ProxyFactory) -> None:
    """/-/health answers; Expect is handled here and not forwarded."""
    proxy = await make_proxy(routes(upstream))
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{proxy}/-/health") as r:
            assert r.status == 200
            assert await r.json() == {"status": "ok"}
        async with client.put(f"{proxy}/travtus/x", data=b"body", expect100=True) as r:
            assert r.status == 200
    assert upstream.last.body == b"body"
    assert upstream.last.header("Expect") is None


async def test_any_method_is_forwarded(upstream: Upstream, make_proxy: ProxyFactory) -> None:
    """Methods pass as sent, DELETE and PATCH and extension methods alike."""
    proxy = await make_proxy(routes(upstream))
    async with aiohttp.ClientSession() as client:
        for method in ("DELETE", "PATCH", "OPTIONS", "PROPFIND"):
            async with client.request(method, URL(f"{proxy}/travtus/m")) as r:
                assert r.status == 200
            assert upstream.last.method == method


async def test_hop_by_hop_names_match_in_any_case(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """Lower-case hop-by-hop names (and names a lower-case Connection lists) are dropped too."""
    proxy = await make_proxy(routes(upstream))
    response = await raw_http(
        proxy,
        raw_get(
            "/travtus/hop-lower",
            "proxy-connection: keep-alive\r\nconnection: x-client-hop\r\nx-client-hop: 1\r\n"
            "forwarded: for=6.6.6.6\r\n",
        ),
    )
    seen = upstream.last
    for name in ("Proxy-Connection", "X-Client-Hop", "Forwarded"):
        assert seen.header(name) is None, name
    assert response.status == 200
    for name in ("Proxy-Connection", "X-Lower-Hop"):
        assert response.header(name) is None, name


@pytest.mark.parametrize("target", ["/travtus//evil.example/x", "/travtus/x#frag"])
async def test_network_path_and_fragment_targets_are_refused(
    upstream: Upstream, make_proxy: ProxyFactory, target: str
) -> None:
    """With no base path, '//host' would reach the upstream as a network-path reference."""
    proxy = await make_proxy(routes(upstream, ""))
    response = await raw_http(proxy, raw_get(target))
    assert response.status == 400
    assert upstream.seen == []


async def test_cut_body_resets_an_http10_client(
    upstream: Upstream, make_proxy: ProxyFactory
) -> None:
    """A close-delimited body cut by the upstream ends in a reset, not a clean end of file."""
    proxy = await make_proxy(routes(upstream))
    host, port = proxy.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /travtus/broken-chunked HTTP/1.0\r\nHost: p\r\n\r\n")
    await writer.drain()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
