"""The peer a Python user would otherwise write: a bare aiohttp reverse proxy.

One ``ClientSession`` (a keep-alive pool), bodies streamed both ways, a static
``Authorization`` header as ``nginx_proxy`` sets; no other features. Its CPU per request
moves with the machine as ours does (both spend it in the interpreter), so the ratio to it
holds across machines where the ratio to nginx does not.

Run as ``python -m bench.aiohttp_peer --port 0 --upstream http://127.0.0.1:PORT``; prints
one JSON line with its port.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .nginx import STATIC_TOKEN
from .procs import serve_announced

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Transfer-Encoding", "Upgrade",
    )
)  # fmt: skip
SESSION = web.AppKey("session", aiohttp.ClientSession)


def build(upstream: str) -> web.Application:
    base = upstream.rstrip("/")

    async def session(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024),
            cookie_jar=aiohttp.DummyCookieJar(),  # one jar for every client would leak cookies
            auto_decompress=False,  # pass Content-Encoding through as sent
            skip_auto_headers=("Accept-Encoding", "User-Agent"),  # only the client's own
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        yield
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        headers.popall("Host", None)  # the upstream's, from the URL
        headers["Authorization"] = f"Bearer {STATIC_TOKEN}"
        response = web.StreamResponse()
        try:
            async with request.app[SESSION].request(
                request.method,
                URL(base + request.raw_path, encoded=True),
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            ) as answer:
                response.set_status(answer.status, answer.reason)
                response.headers.extend(
                    (k, v) for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP
                )
                await response.prepare(request)
                async for chunk in answer.content.iter_any():
                    await response.write(chunk)
        except aiohttp.ClientError:
            if response.prepared:
                raise  # the head is out: cut the connection
            return web.Response(status=502, text="bad gateway\n")
        await response.write_eof()
        return response

    app = web.Application(client_max_size=0)
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def main(port: int, upstream: str) -> None:
    runner = web.AppRunner(build(upstream), access_log=None)
    await runner.setup()
    await serve_announced(runner, web.TCPSite(runner, "127.0.0.1", port, backlog=4096))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.aiohttp_peer")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8080")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.upstream))
