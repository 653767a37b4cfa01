"""Command line: python -m proxy serve|check|sandbox|demo."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import errno
import functools
import os
import signal
import sys
from collections.abc import Sequence
from typing import Final

import structlog

from . import arguments
from . import config as config_module
from .access import is_loopback
from .app import STATE, ProxyApp, ProxyState, build_app, own_view, start
from .check import render, route_summary
from .config import Config
from .config.tls import ListenerContext, listener_context
from .errors import ConfigError, ListenError
from .notify import Notifier, notifier
from .observe import logs
from .release import DISTRIBUTION, version
from .runtime import egress_summary
from .workers import GroupLink, announce_ready, serve_own_views, supervise

EXIT_CONFIG: int = 2
SERVE_PORT_HINT: Final = "choose another with --port (or [server] port in the config)"
DEMO_PORTS_HINT: Final = (
    "choose free ports: make demo PORT=8081 SANDBOX_PORT=9001 "
    "(or python -m proxy demo --port 8081 --sandbox-port 9001)"
)


def _config_path(given: str | None) -> str:
    return given or os.environ.get("PROXY_CONFIG") or "routes.toml"


def _prog(argv0: str) -> str:
    """The name the command was run by, for --help and usage lines: the console script's
    own, or ``python -m proxy`` (argv[0] is then this file's path)."""
    name = os.path.basename(argv0)
    return "python -m proxy" if name in ("__main__.py", "", "-c") else name


def _parser(command: str | None = None, prog: str = "python -m proxy") -> argparse.ArgumentParser:
    """The parser; the sandbox's options are added only when ``command`` is "sandbox"."""
    parser = argparse.ArgumentParser(
        prog=prog, description="An authenticating reverse proxy for token-protected vendor APIs."
    )
    parser.add_argument("--version", action="version", version=f"{DISTRIBUTION} {version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="routes.toml path (default: $PROXY_CONFIG, ./routes.toml)")
    serve.add_argument(
        "--host", type=arguments.listen_host, help="listen address (default: [server].host)"
    )
    serve.add_argument(
        "--port", type=arguments.port, help="listen port, 0 for any (default: [server].port)"
    )
    serve.add_argument("--log-level", default="info", choices=logs.LEVELS)
    serve.add_argument("--log-format", default="json", choices=("json", "console"))
    serve.add_argument(
        "--workers",
        type=arguments.workers,
        help="processes sharing the port (default: "
        "[server].workers); limits are divided among them",
    )
    serve.add_argument("--worker-of", type=int, default=0, help=argparse.SUPPRESS)
    serve.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    serve.add_argument("--group-dir", help=argparse.SUPPRESS)
    # The listener keys the group's own command line set, which a worker's reload ignores.
    serve.add_argument("--pinned", default="", help=argparse.SUPPRESS)

    check = commands.add_parser("check", help="validate the config and print the routes")
    check.add_argument("--config", help="routes.toml path (default: $PROXY_CONFIG, ./routes.toml)")

    sandbox_cmd = commands.add_parser("sandbox", help="simulate the three vendor APIs")
    if command == "sandbox":
        # The sandbox (2,000 lines and aiohttp's server) loads only for its own command.
        from . import sandbox

        sandbox.add_arguments(sandbox_cmd)

    demo = commands.add_parser("demo", help="the proxy in front of the sandbox, one process")
    demo.add_argument("--config", default="demo/routes.toml")
    demo.add_argument("--host", type=arguments.listen_host, default="127.0.0.1")
    demo.add_argument("--port", type=arguments.port, default=8080, help="proxy port (0: any)")
    demo.add_argument(
        "--sandbox-port", type=arguments.port, default=9000, help="sandbox port (0: any)"
    )
    demo.add_argument("--log-level", default="info", choices=logs.LEVELS)
    demo.add_argument("--log-format", default="console", choices=("json", "console"))
    return parser


def _check(path: str) -> int:
    try:
        config = config_module.load(path)
        egress = egress_summary(config)  # reads the environment, as serve will
    except ConfigError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print("\n".join([*render(path, config), f"  {egress}"]))
    return 0


async def _serve(
    path: str,
    config: Config,
    host: str,
    port: int,
    workers: int,
    redactor: logs.Redactor,
    access_log: logs.AccessLog | None,
    group: GroupLink | None = None,
    pinned: frozenset[str] = frozenset(),
    notify: Notifier | None = None,
) -> None:
    """One serving process: until SIGTERM/SIGINT, then a drain (see _drain); SIGHUP reloads
    the config file. ``group``: this process is that worker of a group (serve --workers N);
    ``pinned``: listener keys the command line set; ``notify``: systemd's socket."""
    log = structlog.get_logger("proxy")
    _loaded(log, path, config)
    app = build_app(
        config, on_secrets=redactor.update, access_log=access_log, workers=workers, group=group
    )
    tls = listener_context(config.server.tls)  # each worker its own
    # Bound before any token is asked for: a start that cannot listen spends none.
    runner, addresses = await start(
        app,
        host,
        port,
        shutdown_timeout=config.server.shutdown_grace,
        reuse_port=workers > 1,
        pinned=pinned,
        tls=None if tls is None else tls.context,
    )
    views: asyncio.Server | None = None
    if group is not None:
        own = functools.partial(own_view, app[STATE])
        views = await serve_own_views(group.directory, group.index, own)
    stop = asyncio.Event()
    hurry = asyncio.Event()  # a second SIGTERM/SIGINT: the drain ends at once

    def stopping() -> None:
        (hurry if stop.is_set() else stop).set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping)

    reloading = asyncio.Lock()  # SIGHUPs in quick succession apply in turn
    reloads: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        async with reloading:
            if notify is not None:
                notify.reloading()
            try:
                await _reload(log, path, app, tls)
            finally:
                if notify is not None and not stop.is_set():
                    notify.ready()

    def hangup() -> None:
        task = loop.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    scheme = "http" if tls is None else "https"
    shown = [f"{scheme}://{h if ':' not in h else f'[{h}]'}:{p}" for h, p in addresses]
    if workers > 1:
        log.info("worker_started", version=version(), addresses=shown, pid=os.getpid())
        announce_ready(shown)
    else:
        log.info(
            "proxy_started",
            version=version(),
            addresses=shown,
            routes=route_summary(config),
            pid=os.getpid(),
        )
        if not config.clients and not _is_local(host):
            log.warning(
                "proxy_open",
                host=host,
                reason="no [clients] are configured: anyone who can reach this "
                "address can use the proxy's credentials",
            )
    if notify is not None:
        notify.ready()
    try:
        await stop.wait()
        if notify is not None:
            notify.stopping()
        await _drain(log, app[STATE], hurry)
    finally:
        # Stop listening, let requests in flight finish (shutdown_grace), then close.
        log.info("proxy_stopping")
        if views is not None:
            views.close()
        await runner.cleanup()
        log.info("proxy_stopped")


async def _reload(
    log: structlog.typing.FilteringBoundLogger,
    path: str,
    app: ProxyApp,
    tls: ListenerContext | None,
) -> None:
    # Either failure keeps the running config; the problems never hold secret values.
    try:
        fresh = config_module.load(path)
    except ConfigError as exc:
        log.error("config_reload_failed", path=path, problems=exc.problems)
        return
    _loaded(log, path, fresh)
    proxy = app[STATE]
    await proxy.runtime.state.prepare(fresh.auth.values())
    try:
        _reload_tls(log, tls, fresh)
        proxy.reload(fresh)
    except ConfigError as exc:  # a ca_file changed between loading and use
        log.error("config_reload_failed", path=path, problems=exc.problems)


async def _drain(
    log: structlog.typing.FilteringBoundLogger, proxy: ProxyState, hurry: asyncio.Event
) -> None:
    """The Kubernetes way to stop: /-/ready says 503 at once, while connections are still
    accepted and served for server.drain_delay seconds, the time a load balancer or an
    Endpoints update takes to stop sending here; a second signal cuts it short."""
    delay = proxy.runtime.config.server.drain_delay
    proxy.draining = True
    log.info("proxy_draining", drain_delay=delay, hint="a second SIGTERM or SIGINT skips it")
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await hurry.wait()


def _reload_tls(
    log: structlog.typing.FilteringBoundLogger, tls: ListenerContext | None, fresh: Config
) -> None:
    """The listener's certificate from the reloaded config (ConfigError: the old one stays);
    turning TLS on or off needs a restart, as the address does."""
    if tls is not None and fresh.server.tls is not None:
        tls.update(fresh.server.tls)
    elif (tls is None) != (fresh.server.tls is None):
        log.warning("config_reload_keeps_listener", reason="server.tls on or off needs a restart")


def _loaded(log: structlog.typing.FilteringBoundLogger, path: str, config: Config) -> None:
    # Counts only: what a config holds, never a value from it.
    log.info(
        "config_loaded",
        path=path,
        routes=len(config.routes),
        auth=len(config.auth),
        clients=len(config.clients),
    )


def _is_local(host: str) -> bool:
    """Is ``host`` (a listen address, or a host name) reachable from this machine only?"""
    return host == "localhost" or is_loopback(host)


def _listen_problem(exc: ListenError, hint: str) -> str:
    """One line: why the port could not be had, and how to pick another when it is taken."""
    if exc.reason == os.strerror(errno.EADDRINUSE):
        return f"{exc}; {hint}"
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    # Called with no arguments: by the console script or `python -m proxy`, named by argv[0].
    prog = _prog(sys.argv[0]) if argv is None else "python -m proxy"
    argv = sys.argv[1:] if argv is None else argv
    # Only -h and --version come before the command: the first argument is the command.
    args = _parser(argv[0] if argv else None, prog).parse_args(argv)
    if args.command == "sandbox":
        from . import sandbox

        asyncio.run(sandbox.serve(args))
        return 0
    path = _config_path(args.config)
    if args.command == "check":
        return _check(path)
    # A group's workers write to one stdout (their supervisor's, which writes little).
    out = logs.LineBuffer(sys.stdout.buffer, shared=bool(getattr(args, "worker_of", 0)))
    atexit.register(out.flush_now)  # lines still waiting when the process ends
    # A worker of a group says which one on every line, the same across its restarts.
    worker = args.worker_index if getattr(args, "worker_of", 0) else None
    redactor = logs.configure(args.log_level, args.log_format, stream=out, worker=worker)
    if args.command == "demo":
        from .demo import run_demo  # the sandbox comes with it

        try:
            asyncio.run(run_demo(path, args.host, args.port, args.sandbox_port))
        except ConfigError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        except ListenError as exc:
            print(_listen_problem(exc, DEMO_PORTS_HINT), file=sys.stderr)
            return 1
        return 0
    try:
        config = config_module.load(path)
    except ConfigError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    host = config.server.host if args.host is None else args.host
    port = config.server.port if args.port is None else args.port
    workers = config.server.workers if args.workers is None else args.workers
    if not config.clients and not _is_local(host) and workers > 1:
        structlog.get_logger("proxy").warning("proxy_open", host=host)
    if args.worker_of:
        pinned = frozenset(filter(None, args.pinned.split(",")))
    else:
        pinned = frozenset(k for k in ("host", "port", "workers") if getattr(args, k) is not None)
    # Only the process systemd started speaks to it; a group's workers stay silent.
    notify = None if args.worker_of else notifier(os.environ)
    try:
        if workers > 1 and not args.worker_of:
            argv = [
                "serve",
                "--config",
                path,
                "--log-level",
                args.log_level,
                "--log-format",
                args.log_format,
                "--pinned",
                ",".join(sorted(pinned)),
            ]
            scheme = "https" if config.server.tls is not None else "http"
            summary = route_summary(config)
            return asyncio.run(supervise(argv, host, port, workers, summary, notify, scheme))
        access_log = logs.access_log(args.log_level, args.log_format, redactor, out, worker)
        group = (
            GroupLink(args.group_dir, args.worker_index, args.worker_of)
            if args.worker_of and args.group_dir
            else None
        )
        asyncio.run(
            _serve(
                path,
                config,
                host,
                port,
                args.worker_of or 1,
                redactor,
                access_log,
                group,
                pinned,
                notify,
            )
        )
    except ConfigError as exc:  # a ca_file changed between loading and use
        print(f"{path}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ListenError as exc:
        print(_listen_problem(exc, SERVE_PORT_HINT), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
