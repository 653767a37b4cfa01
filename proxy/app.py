"""build_app(): the aiohttp application, its upstream sessions and how it is served."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
from aiohttp import web

from .auth import TokenManager
from .config import AuthConfig, Config, RouteConfig
from .forward import SKIP_AUTO_HEADERS, Forwarder
from .limits import RateLimit
from .routing import RouteTable
from .upstream import Target

FORWARDER: Final = web.AppKey("forwarder", Forwarder)
TOKENS: Final = web.AppKey("tokens", dict[str, TokenManager])
TARGETS: Final = web.AppKey("targets", dict[str, Target])

# Server settings every way of serving the app must use (CLI, tests, workers):
# - access_log=None: aiohttp's stdlib access log halves throughput; we log ourselves.
# - handler_cancellation: a client that hangs up cancels its upstream request too.
# - auto_decompress=False: a gzip request body must reach the upstream as sent, not inflated
#   under a Content-Encoding header that no longer describes it.
RUNNER_KWARGS: Final[dict[str, Any]] = {
    "access_log": None,
    "handler_cancellation": True,
    "auto_decompress": False,
}

# Enough pooled connections for thousands of requests a second per upstream.
POOL_LIMIT: Final = 1024


def _session_key(route: RouteConfig) -> tuple[str, str, int, str | None]:
    up = route.upstream
    return (up.scheme, up.host, up.port, route.ca_file)


def _tls(ca_file: str | None) -> ssl.SSLContext | bool:
    if ca_file is None:
        return True  # verification on, system trust store
    return ssl.create_default_context(cafile=ca_file)


def _new_session(ca_file: str | None) -> aiohttp.ClientSession:
    # Idle connections are dropped after 4 s, before common upstream idle timeouts (Node's
    # 5 s): reusing one the upstream is closing would fail a POST with a 502.
    connector = aiohttp.TCPConnector(
        limit=POOL_LIMIT, ttl_dns_cache=300, ssl=_tls(ca_file), keepalive_timeout=4
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=SKIP_AUTO_HEADERS,
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )


def _token_session(auth: AuthConfig) -> aiohttp.ClientSession:
    """Token endpoints get sessions of their own: no proxy stage ever wraps a token request,
    and no cookie set by an identity provider is kept."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=8, ssl=_tls(auth.ca_file)),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _status(request: web.Request) -> web.Response:
    """Routes with their limits and pauses, and each auth's token state (never a token)."""
    routes = {
        prefix: {
            "upstream": target.route.upstream.url,
            "auth": target.route.auth,
            "cooldown": target.cooldown.status(),
            "limits": {limit.name: limit.status() for limit in target.limits},
            "in_flight": target.budget.active,
            "retrying": target.budget.retrying,
        }
        for prefix, target in request.app[TARGETS].items()
    }
    auth = {name: m.status() for name, m in sorted(request.app[TOKENS].items())}
    return web.json_response({"routes": routes, "auth": auth})


async def _ready(request: web.Request) -> web.Response:
    """200 once every auth table in use holds a valid token, 503 naming those that do not."""
    tokens = request.app[TOKENS]
    failing = sorted(name for name, manager in tokens.items() if not manager.ready)
    body = {
        "status": "not_ready" if failing else "ready",
        "failing": failing,
        "auth": {name: manager.status() for name, manager in sorted(tokens.items())},
    }
    return web.json_response(body, status=503 if failing else 200)


def build_app(config: Config) -> web.Application:
    """The proxy as an aiohttp app; sessions open on startup and close on cleanup."""
    app = web.Application()
    table = RouteTable(config.routes)

    async def upstream_sessions(app: web.Application) -> AsyncIterator[None]:
        # One session per upstream origin (and trust store), shared by routes that use it:
        # connection reuse and the DNS cache work per session.
        sessions: dict[tuple[str, str, int, str | None], aiohttp.ClientSession] = {}
        tokens: dict[str, TokenManager] = {}
        token_sessions: list[aiohttp.ClientSession] = []
        # Limits of an auth table are shared by every route that uses it: vendors limit
        # per client, not per path.
        auth_limits = {
            name: RateLimit(f"auth {name}", auth.rate_limit)
            for name, auth in config.auth.items()
            if auth.rate_limit is not None
        }
        targets: dict[str, Target] = {}
        for route in config.routes:
            key = _session_key(route)
            if key not in sessions:
                sessions[key] = _new_session(route.ca_file)
            provider = None
            limits: list[RateLimit] = []
            if route.rate_limit is not None:
                limits.append(RateLimit(f"route {route.prefix}", route.rate_limit))
            if route.auth is not None:
                if route.auth not in tokens:
                    auth = config.auth[route.auth]
                    token_sessions.append(_token_session(auth))
                    tokens[route.auth] = TokenManager(auth, token_sessions[-1])
                provider = tokens[route.auth]
                if route.auth in auth_limits:
                    limits.append(auth_limits[route.auth])
            targets[route.prefix] = Target(route, sessions[key], provider, tuple(limits))
        app[FORWARDER] = Forwarder(table, targets)
        app[TOKENS] = tokens
        app[TARGETS] = targets
        for manager in tokens.values():
            manager.start()  # fetch now, so /-/ready turns green before the first request
        try:
            yield
        finally:
            # Closed in cleanup, after in-flight requests had their shutdown grace period:
            # closing earlier would cut streams that are still running.
            for manager in tokens.values():
                await manager.close()
            for limit in {limit for target in targets.values() for limit in target.limits}:
                await limit.close()
            for session in [*sessions.values(), *token_sessions]:
                await session.close()

    app.cleanup_ctx.append(upstream_sessions)

    async def forward(request: web.Request) -> web.StreamResponse:
        return await request.app[FORWARDER].handle(request)

    app.router.add_get("/-/health", _health)
    app.router.add_get("/-/ready", _ready)
    app.router.add_get("/-/status", _status)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def start(
    app: web.Application, host: str, port: int, *, shutdown_timeout: float = 30.0
) -> tuple[web.AppRunner, list[tuple[str, int]]]:
    """Serve app on host:port; return the runner and the addresses actually bound."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, **RUNNER_KWARGS)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, [(str(a[0]), int(a[1])) for a in runner.addresses]
