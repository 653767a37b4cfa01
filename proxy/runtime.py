"""Everything built from one config: sessions, token managers, limits, clients, routes.

A reload builds a new Runtime next to the running one and swaps it in; requests in flight
finish on the Runtime they started with, which is closed once they are done. Token managers
of auth tables whose settings did not change move to the new Runtime with their tokens.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Mapping
from typing import Final

import aiohttp
import structlog
from yarl import URL

from .access import Access, Caller, Terms
from .auth import TokenProvider, token_provider
from .bodies import Spool
from .config import AuthConfig, Config, RateLimitConfig, RouteConfig, Secret
from .config.tls import CertificateError, client_context
from .errors import ConfigError
from .forward import Forwarder
from .headers import HeaderPolicy
from .http.client import Pool
from .http.egress import Egress, EgressProxy, NoProxy, egress_from
from .limits import Limit, RateLimit
from .observe.logs import AccessLog
from .observe.metrics import Metrics
from .routing import RouteTable
from .state.base import State
from .state.local import LocalState
from .state.redis import RedisState
from .upstream import Target

log = structlog.get_logger("proxy.runtime")

# Enough pooled connections for thousands of requests a second per upstream.
POOL_LIMIT: Final = 1024
# A table's TLS as a connection needs it: ca_file, cert_file, key_file, key_password.
TlsKey = tuple[str | None, str | None, str | None, Secret | None]
_NO_TLS: Final[TlsKey] = (None, None, None, None)
SessionKey = tuple[str, str, int, TlsKey, EgressProxy | None]


def _tls_key(table: RouteConfig | AuthConfig) -> TlsKey:
    return (table.ca_file, table.cert_file, table.key_file, table.key_password)


def _trust_stores(config: Config) -> dict[TlsKey, ssl.SSLContext | None]:
    """One TLS context per ca_file and client certificate (None: the system trust store, no
    certificate). The loader checked each file, but it may have changed since: one no
    longer usable is a ConfigError naming its key, never an OSError, which serve would
    report as "cannot listen"."""
    tables: list[tuple[str, RouteConfig | AuthConfig]] = [
        (f"routes[{route.prefix}]", route) for route in config.routes
    ]
    tables += [(f"auth.{name}", auth) for name, auth in config.auth.items()]
    stores: dict[TlsKey, ssl.SSLContext | None] = {_NO_TLS: None}
    problems = []
    for key, table in tables:
        wanted = _tls_key(table)
        if wanted in stores:
            continue
        try:
            stores[wanted] = client_context(*wanted)
        except CertificateError as exc:
            problems.append(f"{key}.{exc.key}: {exc}: {getattr(table, exc.key, '')!r}")
        except ValueError as exc:
            problems.append(f"{key}.ca_file: {exc}: {table.ca_file!r}")
    if problems:
        raise ConfigError(problems)
    return stores


def egress(config: Config, environ: Mapping[str, str] | None = None) -> Egress | None:
    """The egress ``[server] egress_proxy`` asks for (None: direct). Only the key turns it
    on: a gateway whose egress changed because it inherited HTTPS_PROXY from a shell or a
    base image would surprise its operator, so without the key the variables are ignored.
    A variable that holds no usable proxy URL is a ConfigError."""
    server = config.server
    setting = server.egress_proxy
    try:
        found = egress_from(
            None if setting is None else setting.reveal(),
            os.environ if environ is None else environ,
        )
    except ValueError as exc:
        raise ConfigError([f"server.egress_proxy: {exc}"]) from None
    if found is not None and server.egress_no_proxy:
        exempt = ",".join(part for part in (found.no_proxy.text, server.egress_no_proxy) if part)
        found = Egress(found.http, found.https, NoProxy(exempt), found.source)
    return found


def egress_summary(config: Config) -> str:
    """The egress line of ``check``: the proxy without its password."""
    found = egress(config)
    if found is None:
        return "egress: direct (server.egress_proxy not set: HTTPS_PROXY and the like ignored)"
    return found.describe()


def _upstream_pool(route: RouteConfig, tls: ssl.SSLContext | None, via: EgressProxy | None) -> Pool:
    # Idle connections are dropped after 4 s, before common upstream idle timeouts (Node's
    # 5 s): reusing one the upstream is closing would fail a POST with a 502.
    up = route.upstream
    return Pool(up.scheme, up.host, up.port, tls, limit=POOL_LIMIT, keepalive=4.0, dialer=via)


def _token_session(
    tls: ssl.SSLContext | None, via: EgressProxy | None = None
) -> aiohttp.ClientSession:
    """Token endpoints get sessions of their own: no proxy stage ever wraps a token request,
    and no cookie set by an identity provider is kept. ``via``: the egress proxy the token
    endpoint is reached through (chosen by the caller; aiohttp's own reading of the
    environment stays off, as NO_PROXY must be read as for the upstreams)."""
    proxy = None
    if via is not None:
        # Credentials in the proxy URL: aiohttp sends them as Proxy-Authorization (its
        # proxy_auth argument is deprecated). The endpoint logs error types only, never
        # aiohttp's exceptions, which would show this URL.
        auth = aiohttp.BasicAuth.decode(via.authorization) if via.authorization else None
        proxy = URL.build(
            scheme="http",
            host=via.host,
            port=via.port,
            user=auth.login if auth else None,
            password=auth.password if auth else None,
        )
    return aiohttp.ClientSession(
        # True: verification on, against the system trust store.
        connector=aiohttp.TCPConnector(limit=8, ssl=tls or True),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        proxy=proxy,
    )


def _token_via(egress: Egress | None, token_url: str) -> EgressProxy | None:
    if egress is None:
        return None
    url = URL(token_url)
    return egress.proxy_for(url.scheme, url.host or "", url.port or 0)


def _session_key(route: RouteConfig, egress: Egress | None) -> SessionKey:
    up = route.upstream
    via = egress.proxy_for(up.scheme, up.host, up.port) if egress is not None else None
    return (up.scheme, up.host, up.port, _tls_key(route), via)


class Runtime:
    """The proxy as one config describes it; handlers read it once per request."""

    __slots__ = (
        "_egress",
        "_handed_limits",
        "_handed_over",
        "_handed_routes",
        "_limits",
        "_new_tokens",
        "_sessions",
        "_token_sessions",
        "access",
        "clients",
        "config",
        "forwarder",
        "idle",
        "in_flight",
        "spool",
        "state",
        "targets",
        "tokens",
    )

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        access_log: AccessLog | None = None,
        previous: Runtime | None = None,
        workers: int = 1,
    ) -> None:
        # First: a ca_file that fails leaves nothing opened or handed over to close again.
        stores = _trust_stores(config)
        outbound = self._egress = egress(config)
        # What processes will share, kept across reloads: one per process. A reload keeps
        # it whatever [state] now says (app.py warns): the backend changes on restart.
        self.state: State = previous.state if previous is not None else open_state(config, workers)
        # Each limit as this process enforces it (its share, when workers keep their own).
        config = self.config = self.state.share(config)
        # One spool budget per process: bodies buffered under the old config still count.
        self.spool: Spool = previous.spool if previous is not None else Spool()
        self.spool.configure(config.server)
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._handed_over: set[str] = set()
        self._new_tokens: list[TokenProvider] = []
        self._token_sessions: dict[str, aiohttp.ClientSession] = {}
        used = {r.auth for r in config.routes if r.auth} | {
            name for c in config.clients.values() for name in c.auth.values()
        }
        self.tokens: dict[str, TokenProvider] = {}
        for name in sorted(used):
            auth = config.auth[name]
            via = _token_via(outbound, auth.token_url)
            if (
                previous is not None
                and previous.config.auth.get(name) == auth
                # A session's egress is fixed: a changed egress_proxy needs a new one.
                and _token_via(previous._egress, auth.token_url) == via
            ):
                # Same settings: keep the cached token (and its refresh token) across reload.
                self.tokens[name] = previous.tokens[name]
                self._token_sessions[name] = previous._token_sessions[name]
                previous._handed_over.add(name)
                continue
            session = self._token_sessions[name] = _token_session(stores[_tls_key(auth)], via)
            manager = token_provider(
                auth, session, observer=metrics, store=self.state.token_store(auth)
            )
            self.tokens[name] = manager
            self._new_tokens.append(manager)
        # Limits and route pauses outlive a reload when their settings do not change: a
        # reload must neither refill a bucket the upstream counts against us nor forget
        # that the upstream asked us to wait.
        self._limits: dict[str, RateLimit] = {}
        self._handed_limits: set[str] = set()
        self._handed_routes: set[str] = set()  # routes whose pause and learned rate moved on
        # Limits of an auth table are shared by every route that uses it: vendors limit
        # per client, not per path.
        auth_limits = {
            name: self._limit(f"auth {name}", auth.rate_limit, previous)
            for name, auth in config.auth.items()
            if auth.rate_limit is not None
        }
        # One session per upstream origin (and trust store), shared by routes that use it:
        # connection reuse and the DNS cache work per session.
        self._sessions: dict[SessionKey, Pool] = {}
        self.targets: dict[str, Target] = {}
        route_limits: dict[str, tuple[Limit, ...]] = {}
        for route in config.routes:
            key = _session_key(route, outbound)
            if key not in self._sessions:
                self._sessions[key] = _upstream_pool(route, stores[_tls_key(route)], key[4])
            own: tuple[Limit, ...] = ()
            if route.rate_limit is not None:
                own = (self._limit(f"route {route.prefix}", route.rate_limit, previous),)
            route_limits[route.prefix] = own
            limits = own
            provider: TokenProvider | None = None
            if route.auth is not None:
                provider = self.tokens[route.auth]
                if route.auth in auth_limits:
                    limits = (*own, auth_limits[route.auth])
            old = previous.targets.get(route.prefix) if previous is not None else None
            same_vendor = old is not None and old.route.upstream == route.upstream
            # Same vendor: its pause and the rate learned from it carry on.
            pause = old.route_pause if old is not None and same_vendor else None
            target = Target(
                route,
                self._sessions[key],
                provider,
                limits,
                metrics,
                self.spool,
                pause=self.state.route_pause(route.prefix, route.upstream.url)
                if pause is None
                else pause,
            )
            if previous is not None and old is not None and same_vendor:
                old.adaptive.ceiling = target.adaptive.ceiling
                target.adaptive = old.adaptive
                previous._handed_routes.add(route.prefix)
            self.targets[route.prefix] = target
        clients: dict[str, tuple[str, Caller]] = {}
        self.clients: dict[str, Caller] = {}
        for name, client in config.clients.items():
            limit = None
            if client.rate_limit is not None:
                limit = self._limit(f"client {name}", client.rate_limit, previous)
            mine: tuple[Limit, ...] = () if limit is None else (limit,)
            terms: dict[str, Terms] = {}
            for prefix, target in self.targets.items():
                auth_name = client.auth.get(prefix)
                if auth_name is None:
                    terms[prefix] = (target.provider, target.limits + mine)
                else:
                    # Its own identity on this route, with that identity's limit instead
                    # of the default one's.
                    extra = (auth_limits[auth_name],) if auth_name in auth_limits else ()
                    provider = self.tokens[auth_name]
                    terms[prefix] = (provider, route_limits[prefix] + extra + mine)
            routes = None if client.routes is None else frozenset(client.routes)
            self.clients[name] = Caller(name, routes, limit, terms)
            clients[name] = (client.key.reveal(), self.clients[name])
        self.access = Access(config.server, clients)
        headers = HeaderPolicy(
            config.server.client_key_header if clients else None,
            via=config.server.via,
            trusted_proxies=config.server.trusted_proxies,
        )
        self.forwarder = Forwarder(
            RouteTable(config.routes, config.server.hosts),
            self.targets,
            self.access,
            headers,
            metrics,
            access_log,
        )

    def _limit(self, name: str, config: RateLimitConfig, previous: Runtime | None) -> RateLimit:
        limit = previous._limits.get(name) if previous is not None else None
        if previous is not None and limit is not None and limit.config == config:
            previous._handed_limits.add(name)
        else:
            limit = RateLimit(name, config, self.state.capacity(name, config))
        self._limits[name] = limit
        return limit

    def enter(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self.idle.set()

    def start(self) -> None:
        """Fetch the new auth tables' tokens now, so /-/ready turns green before traffic."""
        for manager in self._new_tokens:
            manager.start()

    def secrets(self) -> list[str]:
        """Every credential this config holds, for the log redactor."""
        values = [c.key.reveal() for c in self.config.clients.values()]
        for auth in self.config.auth.values():
            values.extend(secret.reveal() for secret in auth.secrets)
        tls = self.config.server.tls
        passwords = [t.key_password for t in (*self.config.routes, *self.config.auth.values())]
        passwords.append(None if tls is None else tls.key_password)
        values.extend(p.reveal() for p in passwords if p is not None)
        state = self.config.state
        if state.encryption_key is not None:
            values.append(state.encryption_key.reveal())
        if state.url is not None:
            url = URL(state.url.reveal())
            values.extend(part for part in (url.user, url.password) if part)
        values.extend(secret.reveal() for secret in self.config.from_files)
        outbound = self._egress
        for via in {outbound.http, outbound.https} if outbound is not None else ():
            if via is not None and via.authorization is not None:
                password = aiohttp.BasicAuth.decode(via.authorization).password
                values.append(via.authorization.removeprefix("Basic "))
                if password:
                    values.append(password)
        return values

    def pauses(self) -> list[tuple[str, float, float | None]]:
        """Per route: seconds paused in all, and the learned rate (None: not pacing)."""
        return [
            (p, t.route_pause.paused_seconds, t.adaptive.rate()) for p, t in self.targets.items()
        ]

    def token_expiry(self) -> list[tuple[str, float | None]]:
        return [(n, m.status()["expires_in_s"]) for n, m in self.tokens.items()]

    async def close(self) -> None:
        """Close what this Runtime owns; managers handed to a newer Runtime stay open."""
        for name, manager in self.tokens.items():
            if name not in self._handed_over:
                await manager.close()
                await self._token_sessions[name].close()
        for name, limit in self._limits.items():
            if name not in self._handed_limits:
                await limit.close()
        for prefix, target in self.targets.items():
            if prefix not in self._handed_routes:
                await target.adaptive.close()
        for session in self._sessions.values():
            await session.close()


def open_state(config: Config, workers: int = 1) -> State:
    """The state backend ``[state]`` asks for, for one of ``workers`` processes; one per
    process, kept across reloads."""
    backend = config.state.backend
    if backend == "local":
        return LocalState(workers=workers)
    if backend == "redis":
        return RedisState(config.state, workers=workers)
    raise ConfigError([f"state.backend: no backend {backend!r}"])  # the loader refused it
