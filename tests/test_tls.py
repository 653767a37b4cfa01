"""TLS to upstreams: verified by default, private CAs trusted only through ca_file."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import trustme
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from .conftest import ProxyFactory


async def _hello(request: web.Request) -> web.Response:
    return web.json_response({"tls": True})


async def test_tls_is_verified_and_ca_file_trusts_a_private_ca(
    aiohttp_server: AiohttpServer, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """An upstream signed by an unknown CA is refused (502) unless its CA is configured."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    app = web.Application()
    app.router.add_get("/hello", _hello)
    server = await aiohttp_server(app, host="127.0.0.1", ssl=server_ctx)
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))

    proxy = await make_proxy(
        f'[[routes]]\nprefix = "/public"\nupstream = "https://127.0.0.1:{server.port}"\n'
        f'[[routes]]\nprefix = "/private"\nupstream = "https://127.0.0.1:{server.port}"\n'
        f'ca_file = "{ca_path}"\n'
    )
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{proxy}/public/hello") as r:
            assert r.status == 502
            assert r.headers["X-Proxy-Error"] == "upstream_unreachable"
        async with client.get(f"{proxy}/private/hello") as r:
            assert r.status == 200
            assert await r.json() == {"tls": True}
