"""build_app(): the proxy application, its lifecycle, the /-/ endpoints and reloads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

import structlog

from .config import Config
from .errors import (
    ForbiddenError,
    ListenError,
    MethodNotAllowedError,
    NoRouteError,
    ProxyError,
    UnauthorizedError,
)
from .fds import connection_cap
from .headers import RequestIds
from .http.replies import error_response
from .http.server import Reply, Request, Server
from .observe.accounting import Accounting, Stats
from .observe.logs import REQUEST_ID, AccessLog, structlog_access_log
from .observe.metrics import Metrics
from .observe.page import page
from .observe.recent import RecentErrors
from .release import version
from .runtime import Runtime
from .workers import GroupLink

log = structlog.get_logger("proxy.app")


class ProxyState:
    """The running Runtime (swapped on reload) and what outlives reloads."""

    __slots__ = (
        "_retiring",
        "access_log",
        "accounting",
        "draining",
        "errors",
        "group",
        "listener",
        "metrics",
        "on_secrets",
        "request_ids",
        "runtime",
    )

    def __init__(
        self,
        config: Config,
        access_log: AccessLog | None = None,
        request_ids: RequestIds | None = None,
        workers: int = 1,
    ) -> None:
        self.metrics = Metrics()
        self.request_ids = request_ids or RequestIds()
        self.access_log = access_log
        # For what the proxy answers itself: those requests never reach a Runtime's pipeline.
        self.accounting = Accounting(self.metrics, access_log)
        # The status page's recent errors: one ring per process, whichever config answered.
        self.errors = RecentErrors()
        self.runtime = Runtime(config, self.metrics, access_log, workers=workers)
        self._retiring: set[asyncio.Task[None]] = set()
        # Told every credential of each config loaded, for the log redactor.
        self.on_secrets: Callable[[list[str]], None] | None = None
        # Set in a worker of serve --workers N: /-/metrics and /-/status answer for all.
        self.group: GroupLink | None = None
        # Set on SIGTERM: /-/ready says 503 so load balancers stop sending, while requests
        # are still served until the listener closes.
        self.draining = False
        # What the listener really runs on, by [server] key (start() fills it in); keys
        # the command line set are left out, as a file cannot change them anyway.
        self.listener: dict[str, object] = {}
        self._watch()

    def _watch(self) -> None:
        runtime = self.runtime
        self.metrics.watch(runtime.token_expiry, runtime.pauses)
        self.metrics.watch_state(runtime.state)
        runtime.forwarder.errors = self.errors
        if self.on_secrets is not None:
            self.on_secrets(runtime.secrets())

    def reload(self, config: Config) -> None:
        """Serve new requests from ``config``; retire the old Runtime once it is idle."""
        old = self.runtime
        # Against the listener, not the previous config: after a port changes and changes
        # back, the file again says what the listener runs on.
        fixed = sorted(k for k, v in self.listener.items() if getattr(config.server, k) != v)
        if fixed:
            log.warning(
                "config_reload_keeps_listener",
                keys=fixed,
                reason="the listener's settings change only on restart",
            )
        self.runtime = Runtime(config, self.metrics, self.access_log, previous=old)
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
        await self.runtime.state.close()  # kept across reloads: closed once, last


class _StateKey:
    """``app[STATE]``: the running ProxyState of a started app."""


STATE: Final = _StateKey()
Admin = Callable[[Request, ProxyState], Awaitable[Reply]]
# The proxy's own state is never for a shared cache to keep (status behind admin_access).
_JSON: Final = {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store"}


def _json(body: Any, status: int = 200) -> Reply:
    return Reply(status, _JSON, json.dumps(body).encode())


async def _health(request: Request, state: ProxyState) -> Reply:
    return _json({"status": "ok"})


async def _ready(request: Request, state: ProxyState) -> Reply:
    """200 once every auth table in use holds a valid token, 503 naming those that do not."""
    if state.draining:
        return _json({"status": "draining", "reason": "the proxy is shutting down"}, 503)
    tokens = state.runtime.tokens
    failing = sorted(name for name, manager in tokens.items() if not manager.ready)
    body = {
        "status": "not_ready" if failing else "ready",
        "failing": failing,
        "auth": {name: manager.status() for name, manager in sorted(tokens.items())},
    }
    return _json(body, status=503 if failing else 200)


async def _status(request: Request | None, state: ProxyState) -> Reply:
    """Routes with their limits and pauses, each auth's token state (never a token), the
    clients, and the state backend."""
    runtime = state.runtime
    routes = {
        prefix: {
            "upstream": target.route.upstream.url,
            "auth": target.route.auth,
            "cooldown": target.route_pause.status(),
            "learned_rate": target.adaptive.status(),
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
            "own_auth": dict(runtime.config.clients[name].auth),
        }
        for name, client in sorted(runtime.clients.items())
    }
    return _json(
        {
            "version": version(),
            "routes": routes,
            "auth": auth,
            "clients": clients,
            "state": runtime.state.health(),
            "errors": state.errors.snapshot(),
        }
    )


_METRICS: Final = {
    "Content-Type": "text/plain; version=0.0.4; charset=utf-8",
    "Cache-Control": "no-store",
}


async def _metrics(request: Request | None, state: ProxyState) -> Reply:
    return Reply(200, _METRICS, state.metrics.exposition())


async def own_view(state: ProxyState, view: str) -> bytes:
    """This process's own /-/metrics or /-/status body, for its group's supervisor."""
    return (await (_metrics if view == "metrics" else _status)(None, state)).body


def _grouped(own: Admin, view: str, headers: dict[str, str]) -> Admin:
    """In a worker of a group: the group's view, from its supervisor; ``?worker=<i>``:
    worker i's own."""

    async def handler(request: Request, state: ProxyState) -> Reply:
        if state.group is None:
            return await own(request, state)
        try:
            status, body = await state.group.view(view, request.raw_path.partition("?")[2])
        except ProxyError as error:
            return error_response(error, REQUEST_ID.get() or "")
        return Reply(status, headers if status == 200 else _JSON, body)

    return handler


async def _page(request: Request, state: ProxyState) -> Reply:
    return page()


ADMIN: Final[dict[str, tuple[Admin, bool]]] = {
    # path: (handler, restricted by server.admin_access)
    "/-/": (_page, True),  # the status page draws /-/status: the same rule
    "/-/health": (_health, False),
    "/-/ready": (_ready, False),
    "/-/status": (_grouped(_status, "status", _JSON), True),
    "/-/metrics": (_grouped(_metrics, "metrics", _METRICS), True),
}


async def _dispatch(state: ProxyState, request: Request) -> Reply | None:
    runtime = state.runtime  # read once: this request finishes on this config
    request_id = state.request_ids.for_request(request.headers)
    REQUEST_ID.set(request_id)  # every line logged while handling it carries the id
    path = request.raw_path
    if not runtime.access.peer_allowed(request.remote):
        # Before anything else: not even the route table is consulted.
        log.warning("source_refused", remote=request.remote)
        return _refused(state, request, request_id, ForbiddenError("source address not allowed"))
    if request.method in _REFUSED_METHODS:
        # TRACE would echo our injected token back to the client; CONNECT asks for a
        # tunnel to anywhere. Neither is ever forwarded.
        error = MethodNotAllowedError(
            "TRACE and CONNECT are not allowed through this proxy", headers=_FORWARD_ALLOW
        )
        return _refused(state, request, request_id, error)
    if path.startswith("/-/"):
        stats = Stats(request_id)
        stats.client = _caller(runtime, request)
        answer = await _admin(request, state, runtime, path, request_id)
        answer.headers = {**answer.headers, "X-Request-ID": request_id}
        if "X-Proxy-Error" in answer.headers:
            state.errors.note("/-/", answer.status, answer.headers["X-Proxy-Error"])
        logged = runtime.config.server.access_log_probes or path.partition("?")[0] not in PROBES
        state.accounting.account(
            request, stats, stats.answered(request, answer).status, local="/-/", logged=logged
        )
        return answer
    runtime.enter()
    try:
        return await runtime.forwarder.handle(request, request_id)
    finally:
        runtime.leave()


def _refused(state: ProxyState, request: Request, request_id: str, error: ProxyError) -> Reply:
    """Answered by the proxy before routing: counted and logged under route "refused"."""
    stats = Stats(request_id)
    refused = stats.answered(request, error_response(error, request_id))
    state.errors.note("refused", error.status, error.code)
    state.accounting.account(request, stats, refused.status, local="refused")
    return refused


async def _admin(
    request: Request, state: ProxyState, runtime: Runtime, path: str, request_id: str
) -> Reply:
    entry = ADMIN.get(path.partition("?")[0])
    if entry is None:
        return error_response(NoRouteError("no such endpoint of the proxy"), request_id)
    error: ProxyError
    if request.method not in ("GET", "HEAD"):
        # Our words only: no error echoes the request.
        error = MethodNotAllowedError("this endpoint takes GET and HEAD", headers=_ADMIN_ALLOW)
        return error_response(error, request_id)
    handler, restricted = entry
    if restricted and not runtime.access.admin_allowed(request.remote, request.headers):
        error = ForbiddenError("this endpoint is restricted (server.admin_access)")
        return error_response(error, request_id)
    return await handler(request, state)


def _caller(runtime: Runtime, request: Request) -> str | None:
    """The client whose key came with an admin request, for its access line (the key is
    not required there unless admin_access names a client)."""
    try:
        client = runtime.access.identify(request.headers)
    except UnauthorizedError:
        return None
    return None if client is None else client.name


_REFUSED_METHODS: Final = frozenset({"TRACE", "CONNECT"})
_ADMIN_ALLOW: Final = {"Allow": "GET, HEAD"}
# RFC 9110 15.5.6: a 405 lists what is allowed; the upstream decides which of these it
# serves, the proxy forwards every one.
_FORWARD_ALLOW: Final = {"Allow": "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"}
# Health checks: left out of the access log with server.access_log_probes = false.
PROBES: Final = frozenset({"/-/health", "/-/ready"})


class ProxyApp:
    """The proxy before and while it serves: its state exists from start() to cleanup()."""

    def __init__(
        self,
        config: Config,
        on_secrets: Callable[[list[str]], None] | None,
        access_log: AccessLog | None,
        workers: int = 1,
        group: GroupLink | None = None,
    ) -> None:
        self._config = config
        self._workers = workers
        self._group = group
        self._on_secrets = on_secrets
        self._access_log = access_log
        self._state: ProxyState | None = None
        self._request_ids = RequestIds()

    @property
    def config(self) -> Config:
        return self._config

    @property
    def workers(self) -> int:
        return self._workers

    def __getitem__(self, key: _StateKey) -> ProxyState:
        if self._state is None:
            raise LookupError("the proxy is not started")
        return self._state

    async def open(self) -> None:
        state = ProxyState(self._config, self._access_log, self._request_ids, self._workers)
        state.on_secrets = self._on_secrets
        state.group = self._group
        state._watch()
        self._state = state
        await state.runtime.state.start()

    def begin(self) -> None:
        """Fetch tokens now, so /-/ready turns green before traffic; called once the port
        is bound, so a start that fails to listen has spent no token request."""
        self[STATE].runtime.start()

    def refusal(self, error: ProxyError, remote: str | None) -> Reply:
        """The server's own refusals (before any handler: malformed, too large, too slow,
        overloaded) are counted and logged too, by status, reason and peer only."""
        if self._state is not None:
            self._state.metrics.count_request("refused", "other", error.status)
            self._state.errors.note(None, error.status, error.code)
        log.info("request_refused", status=error.status, reason=error.message, remote=remote)
        # Nothing of the request is echoed, its X-Request-ID included: it may not even
        # have been parsed.
        return error_response(error, self._request_ids.new())

    async def handle(self, request: Request) -> Reply | None:
        assert self._state is not None
        return await _dispatch(self._state, request)

    async def close(self) -> None:
        if self._state is not None:
            await self._state.close()


def build_app(
    config: Config,
    on_secrets: Callable[[list[str]], None] | None = None,
    access_log: AccessLog | Literal["structlog"] | None = "structlog",
    workers: int = 1,
    group: GroupLink | None = None,
) -> ProxyApp:
    """The proxy as an app; upstream pools and token managers open on start and close on
    cleanup (after in-flight requests had their grace period). ``access_log`` writes each
    request's line (None: no access lines); by default they go through structlog.
    ``workers``: how many processes serve this config (each keeps its own limits' share
    while the state is per process); ``group``: this process is a worker of that group."""
    if access_log == "structlog":
        access_log = structlog_access_log()
    return ProxyApp(config, on_secrets, access_log, workers, group)


class Runner:
    """A started proxy: ``cleanup()`` stops listening, drains, then closes everything."""

    def __init__(self, app: ProxyApp, server: Server, grace: float) -> None:
        self.app = app
        self._server = server
        self._grace = grace

    async def cleanup(self) -> None:
        try:
            await self._server.stop(self._grace)
        finally:
            await self.app.close()


# The [server] keys a reload cannot change: the listener is built from them once.
LISTENER_KEYS: Final = (
    "host",
    "port",
    "workers",
    "header_timeout",
    "idle_timeout",
    "max_connections",
    "max_in_flight",
)


async def start(
    app: ProxyApp,
    host: str,
    port: int,
    *,
    shutdown_timeout: float = 30.0,
    reuse_port: bool = False,
    pinned: frozenset[str] = frozenset(),
    tls: ssl.SSLContext | None = None,
) -> tuple[Runner, list[tuple[str, int]]]:
    """Serve app on host:port; return the runner and the addresses actually bound. Raises
    ListenError when it cannot listen, ConfigError when a file the config names (ca_file)
    has become unusable since it was loaded. ``pinned``: the listener keys the command
    line set (host, port, workers), which a reload of the file does not compare."""
    await app.open()
    settings = app.config.server  # listener settings: a reload does not change them
    cap, fd_limit = connection_cap(settings.max_connections, settings.max_in_flight)
    if cap < settings.max_connections:
        log.warning(
            "fd_limit_low",
            setting="server.max_connections",
            configured=settings.max_connections,
            serving=cap,
            fd_limit=fd_limit,
            hint="raise the hard limit on open files (ulimit -Hn, systemd LimitNOFILE=)",
        )
    server = Server(
        app.handle,
        app.refusal,
        idle_timeout=settings.idle_timeout,
        header_timeout=settings.header_timeout,
        max_connections=cap,
        max_in_flight=settings.max_in_flight,
    )
    try:
        addresses = await server.listen(host, port, reuse_port=reuse_port, tls=tls)
    except OSError as exc:
        await server.stop(0)
        await app.close()
        raise ListenError(host, port, _reason(exc)) from exc
    # The port asked for (0 stays 0), and in a worker the group's size and address even
    # when the file said otherwise as it started (a worker restarted after an edit).
    running = {key: getattr(settings, key) for key in LISTENER_KEYS}
    running.update(host=host, port=port, workers=app.workers)
    app[STATE].listener = {k: v for k, v in running.items() if k not in pinned}
    app.begin()
    return Runner(app, server, shutdown_timeout), [(str(a[0]), int(a[1])) for a in addresses]


def _reason(exc: OSError) -> str:
    """The system's word for a failed bind ("Address already in use"), without the
    address asyncio repeats in its message."""
    if exc.errno is not None:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc)
