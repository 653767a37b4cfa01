"""build_app(): the aiohttp application, its lifecycle, the /-/ endpoints and reloads."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import structlog
from aiohttp import web

from .config import Config
from .errors import ForbiddenError, NoRouteError, ProxyError, error_response
from .forward import Stats
from .headers import request_id_from
from .observe.metrics import Metrics
from .runtime import Runtime

log = structlog.get_logger("proxy.app")

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


class ProxyState:
    """The running Runtime (swapped on reload) and what outlives reloads."""

    __slots__ = ("_retiring", "metrics", "on_secrets", "runtime")

    def __init__(self, config: Config) -> None:
        self.metrics = Metrics()
        self.runtime = Runtime(config, self.metrics)
        self._retiring: set[asyncio.Task[None]] = set()
        # Told every credential of each config loaded, for the log redactor.
        self.on_secrets: Callable[[list[str]], None] | None = None
        self._watch()

    def _watch(self) -> None:
        runtime = self.runtime
        self.metrics.watch(runtime.token_expiry, runtime.pauses)
        if self.on_secrets is not None:
            self.on_secrets(runtime.secrets())

    def reload(self, config: Config) -> None:
        """Serve new requests from ``config``; retire the old Runtime once it is idle."""
        old = self.runtime
        if (config.server.host, config.server.port, config.server.workers) != (
            old.config.server.host,
            old.config.server.port,
            old.config.server.workers,
        ):
            log.warning(
                "config_reload_keeps_listener",
                reason="host, port and workers change only on restart",
            )
        self.runtime = Runtime(config, self.metrics, previous=old)
        self.runtime.start()
        self._watch()
        task = asyncio.get_running_loop().create_task(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        kept = sorted(n for n, m in self.runtime.tokens.items() if old.tokens.get(n) is m)
        log.info("config_reloaded", routes=[r.prefix for r in config.routes], kept_tokens=kept)

    async def _retire(self, old: Runtime) -> None:
        # Requests in flight finish on the config they started with.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(old.config.server.shutdown_grace):
                await old.idle.wait()
        await old.close()

    async def close(self) -> None:
        for task in list(self._retiring):
            await task
        await self.runtime.close()


STATE: Final = web.AppKey("state", ProxyState)
Admin = Callable[[web.Request, ProxyState], Awaitable[web.Response]]


async def _health(request: web.Request, state: ProxyState) -> web.Response:
    return web.json_response({"status": "ok"})


async def _ready(request: web.Request, state: ProxyState) -> web.Response:
    """200 once every auth table in use holds a valid token, 503 naming those that do not."""
    tokens = state.runtime.tokens
    failing = sorted(name for name, manager in tokens.items() if not manager.ready)
    body = {
        "status": "not_ready" if failing else "ready",
        "failing": failing,
        "auth": {name: manager.status() for name, manager in sorted(tokens.items())},
    }
    return web.json_response(body, status=503 if failing else 200)


async def _status(request: web.Request, state: ProxyState) -> web.Response:
    """Routes with their limits and pauses, and each auth's token state (never a token)."""
    runtime = state.runtime
    routes = {
        prefix: {
            "upstream": target.route.upstream.url,
            "auth": target.route.auth,
            "cooldown": target.cooldown.status(),
            "limits": {limit.name: limit.status() for limit in target.limits},
            "in_flight": target.budget.active,
            "retrying": target.budget.retrying,
        }
        for prefix, target in runtime.targets.items()
    }
    auth = {name: m.status() for name, m in sorted(runtime.tokens.items())}
    clients = {
        name: {
            "routes": None if client.routes is None else sorted(client.routes),
            "limits": {limit.name: limit.status() for limit in client.limits},
            "own_auth": {
                prefix: runtime.config.clients[name].auth[prefix] for prefix in client.overrides
            },
        }
        for name, client in sorted(runtime.clients.items())
    }
    return web.json_response({"routes": routes, "auth": auth, "clients": clients})


async def _metrics(request: web.Request, state: ProxyState) -> web.Response:
    return web.Response(
        body=state.metrics.exposition(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


ADMIN: Final[dict[str, tuple[Admin, bool]]] = {
    # path: (handler, restricted by server.admin_access)
    "/-/health": (_health, False),
    "/-/ready": (_ready, False),
    "/-/status": (_status, True),
    "/-/metrics": (_metrics, True),
}


async def _dispatch(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    runtime = state.runtime  # read once: this request finishes on this config
    request_id = request_id_from(request.headers)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    path = request.raw_path
    if not runtime.access.peer_allowed(request.remote):
        # Before anything else: not even the route table is consulted.
        stats = Stats()
        log.warning("source_refused", remote=request.remote)
        refused = error_response(ForbiddenError("source address not allowed"), request_id)
        runtime.forwarder.account(request, stats, refused.status, local="refused")
        return refused
    if path.startswith("/-/"):
        stats = Stats()
        answer = await _admin(request, state, runtime, path, request_id)
        runtime.forwarder.account(request, stats, answer.status, local="/-/")
        return answer
    runtime.enter()
    try:
        return await runtime.forwarder.handle(request, request_id)
    finally:
        runtime.leave()


async def _admin(
    request: web.Request, state: ProxyState, runtime: Runtime, path: str, request_id: str
) -> web.StreamResponse:
    entry = ADMIN.get(path.partition("?")[0])
    if entry is None or request.method not in ("GET", "HEAD"):
        error: ProxyError = NoRouteError(f"no route for {path.partition('?')[0]!r}")
        return error_response(error, request_id)
    handler, restricted = entry
    if restricted and not runtime.access.admin_allowed(request.remote, request.headers):
        error = ForbiddenError("this endpoint is restricted (server.admin_access)")
        return error_response(error, request_id)
    return await handler(request, state)


def build_app(
    config: Config, on_secrets: Callable[[list[str]], None] | None = None
) -> web.Application:
    """The proxy as an aiohttp app; upstream sessions and token managers open on startup
    and close on cleanup (after in-flight requests had their grace period)."""
    app = web.Application()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        state = ProxyState(config)
        state.on_secrets = on_secrets
        state._watch()
        app[STATE] = state
        state.runtime.start()  # fetch tokens now, so /-/ready turns green before traffic
        try:
            yield
        finally:
            await state.close()

    app.cleanup_ctx.append(lifecycle)
    # One catch-all: the raw target decides, not aiohttp's decoded-path router.
    app.router.add_route("*", "/{tail:.*}", _dispatch)
    return app


async def start(
    app: web.Application,
    host: str,
    port: int,
    *,
    shutdown_timeout: float = 30.0,
    reuse_port: bool = False,
) -> tuple[web.AppRunner, list[tuple[str, int]]]:
    """Serve app on host:port; return the runner and the addresses actually bound."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, **RUNNER_KWARGS)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, [(str(a[0]), int(a[1])) for a in runner.addresses]
