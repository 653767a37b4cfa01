"""What ``python -m proxy check`` prints of a valid config: where it listens, the routes and
auth tables, the clients and how they authenticate, every limit, and the state backend.

Never a secret: client keys, client secrets, passwords and keys are only said to be set, a
URL's user and password are blanked, and anything read from a ``${file:PATH}`` is scrubbed
from every line, whatever the key.
"""

from __future__ import annotations

from .config import ClientConfig, Config, RateLimitConfig, StateConfig
from .state.redis_link import shown_url

# Shorter values are not scrubbed: "on" or "1" would blank whole lines.
_MIN_SCRUBBED = 4


def render(path: str, config: Config) -> list[str]:
    """The lines ``check`` prints for the valid config at ``path``."""
    server = config.server
    lines = [
        f"{path}: valid, {len(config.routes)} route(s), {len(config.auth)} auth table(s), "
        f"{len(config.clients)} client(s)",
        f"  listen: {'https' if server.tls is not None else 'http'}://"
        f"{_address(server.host, server.port)}, {_processes(server.workers)}",
    ]
    lines += [f"  {line}" for line in route_summary(config)]
    for name, auth in sorted(config.auth.items()):
        lines.append(f"  auth {name}: {auth.type} via {_shown(auth.token_url)}")
    lines += _clients(config)
    lines += _limits(config)
    lines.append(f"  {state_summary(config.state)}")
    return _scrubbed(lines, [s.reveal() for s in config.from_files])


def route_summary(config: Config) -> list[str]:
    """One line per route: prefix -> upstream, and its auth table."""
    lines = []
    for route in config.routes:
        auth = f"auth={route.auth}" if route.auth else "no auth"
        lines.append(f"{route.prefix} -> {route.upstream.url} ({auth})")
    return lines


def state_summary(state: StateConfig) -> str:
    """The [state] line of ``check``: the URL without its password, never the key."""
    if state.backend == "local":
        return "state: local (this process's memory; --workers N divides every limit)"
    url = "none" if state.url is None else shown_url(state.url.reveal())
    share = "auto" if state.fallback_share is None else state.fallback_share
    return (
        f"state: redis at {url}, key_prefix {state.key_prefix!r}, timeout {state.timeout} s, "
        f"lease {state.lease} s, on_failure {state.on_failure}, fallback_share {share}, "
        f"encryption_key {'set' if state.encryption_key is not None else 'not set'}"
    )


def _address(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else f"{shown}:0 (any free port)"


def _processes(workers: int) -> str:
    if workers == 1:
        return "one process (workers = 1)"
    return f"{workers} worker processes sharing the port (workers = {workers})"


def _clients(config: Config) -> list[str]:
    header = config.server.client_key_header
    admin = config.server.admin_access
    shown_admin = f"client {admin.client}" if admin.client is not None else admin.scope
    lines = [f"  admin endpoints (/-/, /-/status, /-/metrics): {shown_admin}"]
    if not config.clients:
        return [
            *lines,
            "  clients: none (anyone who can reach the listen address may use every route)",
        ]
    lines.append(f"  clients: {len(config.clients)}, each sending its key in {header}")
    for name, client in sorted(config.clients.items()):
        lines.append(f"    {name}: key set, {_allowed(client)}")
    return lines


def _allowed(client: ClientConfig) -> str:
    routes = "every route" if client.routes is None else "routes " + ", ".join(client.routes)
    own = [f"auth {auth} on {prefix}" for prefix, auth in sorted(client.auth.items())]
    return "; ".join([routes, *own])


def _limits(config: Config) -> list[str]:
    limits: list[tuple[str, RateLimitConfig]] = []
    limits += [(f"route {r.prefix}", r.rate_limit) for r in config.routes if r.rate_limit]
    limits += [(f"auth {n}", a.rate_limit) for n, a in sorted(config.auth.items()) if a.rate_limit]
    clients = sorted(config.clients.items())
    limits += [(f"client {n}", c.rate_limit) for n, c in clients if c.rate_limit]
    lines = [f"    {where}: {_limit(limit)}" for where, limit in limits]
    for name, auth in sorted(config.auth.items()):
        if auth.token_rate is not None:
            rate = auth.token_rate
            lines.append(f"    auth {name} token requests: at most {rate.rate} per {rate.per:g} s")
    return ["  limits: none"] if not lines else ["  limits:", *lines]


def _limit(limit: RateLimitConfig) -> str:
    return (
        f"{limit.rate:g} per {limit.per:g} s, burst {limit.capacity:g}, "
        f"max_wait {limit.max_wait:g} s, scope {limit.scope}"
    )


def _shown(url: str) -> str:
    """A URL without the user and password it may carry."""
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    if sep and "@" in authority:
        return f"{scheme}://***@{authority.rpartition('@')[2]}{slash}{tail}"
    return url


def _scrubbed(lines: list[str], secrets: list[str]) -> list[str]:
    for secret in (s for s in secrets if len(s) >= _MIN_SCRUBBED):
        lines = [line.replace(secret, "***") for line in lines]
    return lines
