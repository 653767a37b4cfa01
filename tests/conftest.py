"""Shared fixtures: a recording upstream and a proxy served the way the CLI serves it.

Every log line of the run (in-process proxies through the real redacting pipeline, and the
output of proxy subprocesses) is collected and, when the session ends, searched for every
secret the tests configure and every token a sandbox issued: one hit fails the run.
"""

from __future__ import annotations

import asyncio
import gzip
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy import config as config_module
from proxy.app import build_app, start
from proxy.observe import logs

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
}
SUBPROCESS_OUTPUT: list[str] = []
# Open for the whole session (a context manager would close it after import).
_LOG_FILE = tempfile.NamedTemporaryFile(  # noqa: SIM115
    prefix="proxy-test-log-", suffix=".jsonl", delete=False
)


def pytest_configure(config: pytest.Config) -> None:
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
        resp = web.Response(text="ok")
        resp.headers.add("Set-Cookie", "a=1; Path=/")
        resp.headers.add("Set-Cookie", "b=2; Path=/")
        return resp
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
        resp = web.Response(text="ok")
        resp.headers.add("proxy-connection", "keep-alive")
        resp.headers.add("connection", "x-lower-hop")
        resp.headers.add("x-lower-hop", "1")
        return resp
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
async def upstream(aiohttp_server) -> Upstream:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _upstream_handler)
    holder = Upstream(port=0)
    app[UPSTREAM] = holder
    # The upstream must see compressed request bodies as sent.
    server = await aiohttp_server(app, host="127.0.0.1", auto_decompress=False)
    holder.port = server.port
    return holder


ProxyFactory = Callable[[str], Awaitable[str]]


@pytest.fixture
async def make_proxy() -> AsyncIterator[ProxyFactory]:
    """Start a proxy from routes.toml text, served exactly as `python -m proxy serve` does."""
    runners: list[web.AppRunner] = []

    async def factory(toml: str, env: dict[str, str] | None = None) -> str:
        cfg = config_module.loads(toml, env or {})
        runner, addresses = await start(build_app(cfg), "127.0.0.1", 0, shutdown_timeout=1)
        runners.append(runner)
        host, port = addresses[0]
        return f"http://{host}:{port}"

    yield factory
    for runner in runners:
        await runner.cleanup()


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


async def send_raw(base: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes to the proxy and read until it closes (b"<still open>" if it has not
    after ``timeout``)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(-1), timeout)
        except TimeoutError:
            return b"<still open>"
    finally:
        writer.close()


async def raw_http(base: str, data: bytes, timeout: float = 5.0) -> RawResponse:
    """Send raw bytes to the proxy and read one response until the server closes."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [tuple(line.split(": ", 1)) for line in lines[1:] if line]
    return RawResponse(status, headers, body)  # type: ignore[arg-type]


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
async def scripted(aiohttp_server) -> Scripted:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _scripted_handler)
    holder = Scripted()
    app[SCRIPTED] = holder
    server = await aiohttp_server(app, host="127.0.0.1")
    holder.port = server.port
    return holder


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def route(up: Scripted, extra: str = "", prefix: str = "/api") -> str:
    return f'[[routes]]\nprefix = "{prefix}"\nupstream = "{up.url}"\n{extra}\n'


async def get(client: aiohttp.ClientSession, url: str, **kwargs: object) -> aiohttp.ClientResponse:
    async with client.get(url, **kwargs) as response:  # type: ignore[arg-type]
        await response.read()
        return response
