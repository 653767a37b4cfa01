"""The proxy between third-party software: nginx as the upstream that compresses, clients
that follow redirects, curl sending large bodies the way it does (Expect: 100-continue)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from proxy.config.model import RouteConfig, Upstream
from proxy.redirects import Redirects

from .conftest import ProxyFactory
from .nginx_ref import ReferenceNginx

JSON = b'{"place": "Berlin", "lat": 52.52, "lon": 13.405}\n' * 200


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _serve(handler: Handler) -> tuple[web.AppRunner, int]:
    """An aiohttp app answering every path with ``handler``, on a free loopback port."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = runner.addresses[0][1]
    return runner, port


# -- Via and nginx's gzip_proxied ------------------------------------------------------------


@pytest.fixture
async def compressing(tmp_path: Path) -> AsyncIterator[ReferenceNginx]:
    """nginx as a vendor that compresses JSON with its defaults (gzip_proxied off)."""
    nginx = ReferenceNginx(tmp_path / "gzip")
    await nginx.origin(
        {"places.json": JSON},
        http="gzip on; gzip_types application/json; gzip_min_length 0;",
        server="location / { types { application/json json; } }",
    )
    yield nginx
    nginx.stop()


async def _fetch(url: str) -> tuple[str | None, int]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(url, headers={"Accept-Encoding": "gzip"}) as response,
    ):
        body = await response.read()
        assert response.status == 200
        return response.headers.get("Content-Encoding"), len(body)


async def test_via_off_lets_nginx_upstreams_compress(
    compressing: ReferenceNginx, make_proxy: ProxyFactory
) -> None:
    """nginx (gzip_proxied off) does not compress a request carrying Via: with our Via the
    client gets the whole body uncompressed; with server.via = false it gets gzip, as it
    would calling the vendor directly."""
    direct = await _fetch(f"http://127.0.0.1:{compressing.port}/places.json")
    assert direct[0] == "gzip"
    routes = f'[[routes]]\nprefix = "/v"\nupstream = "http://127.0.0.1:{compressing.port}"\n'
    with_via = await make_proxy(routes)
    without_via = await make_proxy("[server]\nvia = false\n" + routes)
    assert await _fetch(f"{with_via}/v/places.json") == (None, len(JSON))
    encoding, size = await _fetch(f"{without_via}/v/places.json")
    assert (encoding, size) == direct
    assert size * 5 < len(JSON)


async def test_via_off_forwards_the_clients_via_untouched(make_proxy: ProxyFactory) -> None:
    """With server.via = false nothing is added to Via either way, and a client's own Via
    passes as sent (loops can then not be detected: README)."""
    seen: list[str | None] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Via"))
        return web.Response(text="ok", headers={"Via": "1.1 vendor-edge"})

    runner, port = await _serve(echo)
    try:
        proxy = await make_proxy(
            f'[server]\nvia = false\n[[routes]]\nprefix = "/v"\nupstream = "http://127.0.0.1:{port}"\n'
        )
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{proxy}/v/x", headers={"Via": "1.0 corp-proxy"}) as r:
                assert r.headers.getall("Via") == ["1.1 vendor-edge"]
            async with session.get(f"{proxy}/v/x") as r:
                assert r.status == 200
    finally:
        await runner.cleanup()
    assert seen == ["1.0 corp-proxy", None]


# -- redirects -------------------------------------------------------------------------------


def _redirects(upstream: str, prefix: str = "/travtus") -> Redirects:
    scheme, _, rest = upstream.partition("://")
    authority, slash, path = rest.partition("/")
    if authority.startswith("["):  # an IPv6 literal keeps its brackets
        host, _, port = authority.partition("]")
        host, port = host + "]", port.lstrip(":")
    else:
        host, _, port = authority.partition(":")
    default = 443 if scheme == "https" else 80
    base = (slash + path).rstrip("/")
    return Redirects(
        RouteConfig(prefix, Upstream(scheme, host, int(port) if port else default, base))
    )


@pytest.mark.parametrize(
    ("upstream", "location", "rewritten"),
    [
        # An absolute URL on the upstream, under its base path: a path on the proxy, which
        # the client resolves against the URL it used (scheme and host stay its own).
        ("https://api.example", "https://api.example/v1/x?a=%2F#f", "/travtus/v1/x?a=%2F#f"),
        ("https://api.example", "HTTPS://API.EXAMPLE:443/x", "/travtus/x"),
        ("https://api.example", "https://api.example", "/travtus/"),
        ("https://api.example", "https://api.example?q=1", "/travtus/?q=1"),
        ("https://api.example/v1", "https://api.example/v1/items/7", "/travtus/items/7"),
        ("https://api.example/v1", "https://api.example/v1", "/travtus"),
        ("http://[::1]:9000/v1", "http://[::1]:9000/v1/a", "/travtus/a"),
        ("http://[::1]:9000/v1", "http://[0:0:0:0:0:0:0:1]:9000/v1/a", "/travtus/a"),
        # A path under the base path gets the prefix back; a relative reference is right.
        ("https://api.example", "/x/y?z", "/travtus/x/y?z"),
        ("https://api.example/v1", "/v1/x", "/travtus/x"),
        ("https://api.example/v1", "/v1?page=2", "/travtus?page=2"),
        ("https://api.example/v1", "/v1//double", "/travtus//double"),
        ("https://api.example", "next?page=2", "next?page=2"),
        # Anything else passes untouched.
        ("https://api.example/v1", "/v10/x", "/v10/x"),
        ("https://api.example/v1", "/other", "/other"),
        ("https://api.example/v1", "https://api.example/v10/x", "https://api.example/v10/x"),
        ("https://api.example", "http://api.example/x", "http://api.example/x"),
        ("https://api.example", "https://api.example:8443/x", "https://api.example:8443/x"),
        ("https://api.example", "https://evil.example/x", "https://evil.example/x"),
        ("https://api.example", "https://user:pw@api.example/x", "https://user:pw@api.example/x"),
        ("https://api.example", "//api.example/x", "//api.example/x"),
        ("https://api.example", "mailto:a@b.example", "mailto:a@b.example"),
        # Dot segments would climb into another route once the client resolves them.
        ("https://api.example/v1", "https://api.example/v1/../../admin", None),
        ("https://api.example", "/a/%2e%2e/b", None),
        # Values yarl cannot take pass untouched, never a 500.
        ("http://127.0.0.1", "http://127.0.0.1:99999/x", None),
        ("http://127.0.0.1", "http://127.0.0.1:80x/x", None),
        ("https://api.example", "http://xn--a.com/x", None),
        ("https://api.example", "https://api.\udcffexample/x", None),
        ("https://api.example", "/x\u00a0", "/travtus/x\u00a0"),
    ],
)
def test_location_is_rewritten_as_nginx_proxy_redirect_default(
    upstream: str, location: str, rewritten: str | None
) -> None:
    """Location naming the upstream becomes a path on the proxy under the route prefix;
    the rest of the value is kept byte for byte; other values pass untouched (None)."""
    headers = CIMultiDict({"Location": location, "Content-Location": location})
    _redirects(upstream).rewrite(headers)
    assert headers["Location"] == (rewritten if rewritten is not None else location)
    assert headers["Content-Location"] == headers["Location"]


@pytest.mark.parametrize(
    ("location", "rewritten"),
    [
        ("/v1/x", "/x"),
        ("/v1?page=2", "/?page=2"),
        ("/v1#top", "/#top"),
        ("https://api.example/v1", "/"),
        ("/v1//evil.example/x", "/v1//evil.example/x"),  # never "//evil.example/x"
        ("https://api.example/v1//evil.example/x", "https://api.example/v1//evil.example/x"),
    ],
)
def test_catch_all_route_never_yields_a_network_path(location: str, rewritten: str) -> None:
    """On the catch-all route "/" the proxy's path is the upstream's below its base path,
    always an absolute path: never a query or fragment alone, never "//host"."""
    headers = CIMultiDict({"Location": location})
    _redirects("https://api.example/v1", prefix="/").rewrite(headers)
    assert headers["Location"] == rewritten


def test_every_location_value_is_kept() -> None:
    """An upstream that sends Location twice keeps both, each rewritten."""
    headers = CIMultiDict([("Location", "/a"), ("Location", "https://evil.example/")])
    _redirects("https://api.example").rewrite(headers)
    assert headers.getall("Location") == ["/travtus/a", "https://evil.example/"]


@pytest.fixture
async def redirecting() -> AsyncIterator[tuple[int, list[str]]]:
    """An upstream whose pages redirect with absolute and relative Locations (base /v1)."""
    seen: list[str] = []
    port = 0

    async def page(request: web.Request) -> web.Response:
        seen.append(f"{request.path} via={request.headers.get('X-Forwarded-For')}")
        if request.path == "/v1/absolute":
            raise web.HTTPFound(f"http://127.0.0.1:{port}/v1/landing")
        if request.path == "/v1/relative":
            raise web.HTTPFound("/v1/landing?from=relative")
        return web.Response(text=f"landed {request.query_string}")

    runner, port = await _serve(page)
    yield port, seen
    await runner.cleanup()


@pytest.mark.parametrize("start", ["absolute", "relative"])
async def test_a_client_following_redirects_stays_on_the_proxy(
    redirecting: tuple[int, list[str]], make_proxy: ProxyFactory, start: str
) -> None:
    """aiohttp's client follows the upstream's redirect and lands through the proxy (the
    upstream sees X-Forwarded-For on both requests), never on the upstream directly."""
    port, seen = redirecting
    proxy = await make_proxy(
        f'[[routes]]\nprefix = "/api"\nupstream = "http://127.0.0.1:{port}/v1"\n'
    )
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{proxy}/api/{start}") as response,
    ):
        assert response.status == 200
        assert str(response.url).startswith(f"{proxy}/api/landing")
        assert (await response.text()).startswith("landed")
    assert len(seen) == 2
    assert all(line.endswith("via=127.0.0.1") for line in seen)


async def test_rewriting_can_be_switched_off_per_route(
    redirecting: tuple[int, list[str]], make_proxy: ProxyFactory
) -> None:
    """rewrite_location = false passes the upstream's Location as it sent it."""
    port, _ = redirecting
    proxy = await make_proxy(
        f'[[routes]]\nprefix = "/api"\nupstream = "http://127.0.0.1:{port}/v1"\n'
        "rewrite_location = false\n"
    )
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{proxy}/api/absolute", allow_redirects=False) as response,
    ):
        assert response.headers["Location"] == f"http://127.0.0.1:{port}/v1/landing"


# -- curl -------------------------------------------------------------------------------------


@pytest.fixture
async def sink() -> AsyncIterator[int]:
    """An upstream that answers each upload with its size and SHA-256."""

    async def digest(request: web.Request) -> web.Response:
        hasher = hashlib.sha256()
        size = 0
        async for piece in request.content.iter_any():
            hasher.update(piece)
            size += len(piece)
        return web.Response(text=f"{size} {hasher.hexdigest()}")

    runner, port = await _serve(digest)
    yield port
    await runner.cleanup()


@pytest.mark.parametrize("size", [600 * 1000, 1024 * 1024, 3 * 1024 * 1024])
@pytest.mark.parametrize("chunked", [False, True])
async def test_curl_uploads_arrive_whole(
    sink: int, make_proxy: ProxyFactory, tmp_path: Path, size: int, chunked: bool
) -> None:
    """curl's uploads (Expect: 100-continue past 1 MiB, chunked with -H) reach the
    upstream byte for byte on a route that may replay them: the mid-sized upload that used
    to hang among them."""
    curl = shutil.which("curl")
    assert curl is not None, "curl is needed (Debian: apt-get install curl)"
    proxy = await make_proxy(f'[[routes]]\nprefix = "/up"\nupstream = "http://127.0.0.1:{sink}"\n')
    data = hashlib.sha256(b"seed").digest() * (size // 32 + 1)
    data = data[:size]
    (tmp_path / "body").write_bytes(data)
    args = [curl, "-sS", "--max-time", "20", "--data-binary", f"@{tmp_path / 'body'}"]
    if chunked:
        args += ["-H", "Transfer-Encoding: chunked"]
    process = await asyncio.create_subprocess_exec(
        *args, f"{proxy}/up/file", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err
    assert out.decode() == f"{size} {hashlib.sha256(data).hexdigest()}"
