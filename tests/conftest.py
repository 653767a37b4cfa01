"""Shared fixtures: a recording upstream and proxies served the way the CLI serves them.

Every log line of the run (in-process proxies through the real redacting pipeline, and the
output of proxy subprocesses) is collected and, when the session ends, searched for every
secret the tests configure and every token a sandbox issued: one hit fails the run.
"""

from __future__ import annotations

import asyncio
import gzip
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from proxy.observe import logs

from . import hangs
from .processes import InProcessProxy, serve
from .rawpeer import RawUpstreams
from .redisserver import PASSWORD, RedisServer

# Credentials the tests configure; tokens are added as sandboxes issue them.
LEAK_WATCH: set[str] = {
    "sandbox-travtus-secret",
    "sandbox-travis-secret",
    "sandbox-travis-password",
    "sandbox-travelyzer-secret",
    "sandbox-travelyzer-key",
    "do-not-print-me",
    "crm-key-0123456789abcdef",
    "ops-key-0123456789abcdef",
    PASSWORD,
}
SUBPROCESS_OUTPUT: list[str] = []
# Open for the whole session (a context manager would close it after import).
_LOG_FILE = tempfile.NamedTemporaryFile(  # noqa: SIM115
    prefix="proxy-test-log-", suffix=".jsonl", delete=False
)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(hangs, "hangs")
    # The redactor learns no secrets here: the scan must prove that nothing leaks even
    # without that last line of defence knowing the values.
    logs.configure("debug", "json", stream=_LOG_FILE, cache=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _LOG_FILE.flush()
    text = Path(_LOG_FILE.name).read_text(encoding="utf-8", errors="replace")
    text += "\n".join(SUBPROCESS_OUTPUT)
    leaks = sorted(s for s in LEAK_WATCH if s and s in text)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    summary = (
        f"log scan: {len(text.splitlines())} log lines searched for "
        f"{len(LEAK_WATCH)} secrets and tokens"
    )
    if reporter is not None:
        reporter.write_line(summary)
    if leaks:
        if reporter is not None:
            reporter.write_line(f"SECRETS IN LOGS: {len(leaks)} found, e.g. {leaks[0][:12]}...")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Upstream:
    """A real aiohttp server on 127.0.0.1 that records what reaches it."""

    port: int
    seen: list[Seen] = field(default_factory=list)
    # Set when a slow request is abandoned by the proxy before it was answered.
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def last(self) -> Seen:
        assert self.seen, "the upstream received no request"
        return self.seen[-1]


GZIP_BODY = gzip.compress(b'{"hello": "world"}' * 100)


def _raw_headers(request: web.Request) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]


async def _upstream_handler(request: web.Request) -> web.StreamResponse:
    up: Upstream = request.app[UPSTREAM]
    path = request.path
    if path.endswith("/stream-upload"):
        # Count bytes without keeping them: the 50 MB test must not hold the body here.
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        up.seen.append(Seen(request.method, request.raw_path, _raw_headers(request), b""))
        return web.json_response({"received": total})
    body = await request.read()
    if path == "/oauth/token":  # a minimal token endpoint, not recorded as an API call
        return web.json_response(
            {"access_token": "upstream-test-token", "expires_in": 3600, "token_type": "Bearer"}
        )
    up.seen.append(Seen(request.method, request.raw_path, _raw_headers(request), body))
    if path.endswith("/gzip"):
        return web.Response(
            body=GZIP_BODY, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )
    if path.endswith("/redirect"):
        return web.Response(status=302, headers={"Location": "http://127.0.0.1:1/elsewhere"})
    if path.endswith("/cookies"):
        cookies = web.Response(text="ok")
        cookies.headers.add("Set-Cookie", "a=1; Path=/")
        cookies.headers.add("Set-Cookie", "b=2; Path=/")
        return cookies
    if path.endswith("/hop"):
        return web.Response(
            text="ok",
            headers={
                "Connection": "X-Secret-Hop",
                "X-Secret-Hop": "1",
                "Keep-Alive": "timeout=5",
                "Proxy-Authenticate": "Basic",
                "Trailer": "X-T",
                "Upgrade": "h2c",
                "X-Kept": "yes",
            },
        )
    if path.endswith("/status/204"):
        return web.Response(status=204)
    if path.endswith("/status/304"):
        return web.Response(status=304, headers={"ETag": '"v1"'})
    if path.endswith("/status/418"):
        return web.json_response({"vendor": "error"}, status=418, headers={"X-Vendor": "teapot"})
    if path.endswith("/slow"):
        try:
            await asyncio.sleep(float(request.query.get("s", "5")))
        except asyncio.CancelledError:
            up.cancelled.set()
            raise
        return web.Response(text="late")
    if path.endswith("/download"):
        size = int(request.query["size"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.query.get("framing") == "length":
            resp.content_length = size
        await resp.prepare(request)
        block = b"x" * 65536
        while size > 0 and request.method != "HEAD":
            await resp.write(block[:size])
            size -= len(block)
        await resp.write_eof()
        return resp
    if path.endswith("/hop-lower"):
        hops = web.Response(text="ok")
        hops.headers.add("proxy-connection", "keep-alive")
        hops.headers.add("connection", "x-lower-hop")
        hops.headers.add("x-lower-hop", "1")
        return hops
    if path.endswith("/broken-chunked"):
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(b"partial")
        assert request.transport is not None
        request.transport.abort()
        return resp
    if path.endswith("/broken"):
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b"partial")
        assert request.transport is not None
        request.transport.abort()
        return resp
    return web.json_response({"ok": True})


UPSTREAM = web.AppKey("upstream", Upstream)


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> Upstream:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _upstream_handler)
    holder = Upstream(port=0)
    app[UPSTREAM] = holder
    # The upstream must see compressed request bodies as sent.
    server = await aiohttp_server(app, host="127.0.0.1", auto_decompress=False)
    assert server.port is not None  # known once started
    holder.port = server.port
    return holder


class ProxyFactory:
    """The ``make_proxy`` fixture: proxies started from routes.toml text, served exactly as
    `python -m proxy serve` serves them, all stopped when the test ends. Awaiting a call
    gives the proxy's URL; ``serve`` gives the whole proxy (its access lines, its state)."""

    def __init__(self) -> None:
        self._started: list[InProcessProxy] = []

    async def __call__(self, toml: str, env: Mapping[str, str] | None = None) -> str:
        return (await self.serve(toml, env)).url

    async def serve(
        self, toml: str, env: Mapping[str, str] | None = None, *, grace: float = 1.0
    ) -> InProcessProxy:
        proxy = await serve(toml, env, grace=grace)
        self._started.append(proxy)
        return proxy

    async def stop(self) -> None:
        for proxy in self._started:
            await proxy.stop()


@pytest.fixture
async def make_proxy() -> AsyncIterator[ProxyFactory]:
    factory = ProxyFactory()
    yield factory
    await factory.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, with a password (tests/redisserver.py)."""
    server = RedisServer(password=PASSWORD)
    server.start()
    yield server
    server.close()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstreams]:
    """Upstreams on raw sockets that answer with exact scripted bytes (tests/rawpeer.py)."""
    made = RawUpstreams()
    yield made
    await made.close()


Answer = tuple[int, dict[str, str]]


@dataclass
class Scripted:
    """An upstream that answers from a script (then 200) and records what arrived when."""

    port: int = 0
    script: list[Answer] = field(default_factory=list)
    always: Answer | None = None
    arrivals: list[tuple[float, str, bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def times(self, path: str | None = None) -> list[float]:
        return [t for t, p, _ in self.arrivals if path is None or p == path]


SCRIPTED = web.AppKey("scripted", Scripted)


async def _scripted_handler(request: web.Request) -> web.Response:
    up = request.app[SCRIPTED]
    body = await request.read()
    if request.path == "/token":  # a token endpoint for routes with auth; not recorded
        return web.json_response({"access_token": "t", "token_type": "Bearer", "expires_in": 600})
    up.arrivals.append((time.monotonic(), request.path, body))
    status, headers = up.script.pop(0) if up.script else (up.always or (200, {}))
    return web.json_response({"status": status}, status=status, headers=headers)


@pytest.fixture
async def scripted(aiohttp_server: AiohttpServer) -> Scripted:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _scripted_handler)
    holder = Scripted()
    app[SCRIPTED] = holder
    server = await aiohttp_server(app, host="127.0.0.1")
    assert server.port is not None  # known once started
    holder.port = server.port
    return holder


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def route(up: Scripted, extra: str = "", prefix: str = "/api") -> str:
    return f'[[routes]]\nprefix = "{prefix}"\nupstream = "{up.url}"\n{extra}\n'


async def get(
    client: aiohttp.ClientSession, url: str, headers: Mapping[str, str] | None = None
) -> aiohttp.ClientResponse:
    async with client.get(url, headers=headers) as response:
        await response.read()
        return response
