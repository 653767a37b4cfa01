"""The configuration's typed form: frozen dataclasses, built and checked once by loader.py.

Each config key is a field declared with :func:`.settings.setting`: its default and the
check its value takes (from rules.py); the TOML key is the field's name, and the keys a
table accepts are its declared fields, in order (an ``[auth.NAME]`` table: every token
scheme's, see :data:`AUTH`). Adding a key is one field here and its line in the README.

Secret values are wrapped in :class:`Secret` so that no repr, log line or error message can
show them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Any, ClassVar, Final, TypeAlias

from ..http.egress import ENV, parse_proxy_url
from .checks import Checks
from .rules import (
    byte_count,
    choice,
    client_key,
    directory,
    flag,
    fleet_share,
    fraction,
    header_name,
    host_names,
    lease_seconds,
    listen_host,
    networks,
    non_negative,
    optional_secret,
    port_number,
    positive,
    prefix_list,
    prefix_table,
    redis_url,
    request_params,
    secret,
    share,
    statuses,
    text,
    token_endpoint,
    trusted_cas,
    via_name,
    whole,
    whole_rate_limit,
    whole_state,
)
from .settings import OneOf, class_setting, parsed, section, setting
from .tls import pem_file, whole_listener_tls
from .urls import route_prefix, upstream_url
from .values import AdminAccess as AdminAccess
from .values import Secret as Secret
from .values import Upstream as Upstream

CLIENT_AUTH_MODES: Final = ("post", "basic")
# The values Travelyzer documents for expiresIn; anything else is refused by the vendor.
TRAVELYZER_EXPIRES_IN: Final = ("30m", "1h", "24h", "7d", "30d")
# Request fields a scheme sets itself: ``params`` may add fields, never replace these.
OAUTH2_RESERVED_PARAMS: Final = frozenset(
    {"grant_type", "client_id", "client_secret", "username", "password", "refresh_token", "scope"}
)
TRAVELYZER_RESERVED_PARAMS: Final = frozenset({"apiKey", "apiSecret", "expiresIn"})
# Keycloak (TRAVIS) refuses password grants without a scope.
DEFAULT_PASSWORD_SCOPE: Final = "openid"  # noqa: S105 - a scope
# Upstream answers a route may retry (retry.on).
RETRYABLE_STATUSES: Final = (429, 503)
# server.tls.client_auth: must a client present a certificate, or may it?
CLIENT_CERTIFICATES: Final = ("required", "optional")


@dataclass(frozen=True, slots=True)
class Timeout:
    connect: float = setting(positive, default=10.0)
    read: float = setting(positive, default=60.0)


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """``rate`` requests per ``per`` seconds sustained, bursts of up to ``burst``."""

    rate: float = setting(positive)
    per: float = setting(positive, default=1.0)
    burst: float = setting(positive, default=0.0)  # 0: same as rate (loaded: set to rate)
    max_wait: float = setting(non_negative, default=5.0)  # longest wait in line before a 429
    # "global": one limit for every process sharing the state; "process": each its own.
    scope: str = setting(choice("global", "process"), default="global")

    @property
    def capacity(self) -> float:
        return self.burst or self.rate


# A rate_limit table: its keys, then the keys together (burst from rate, rate / per).
RATE_LIMIT: Final = section(RateLimitConfig, then=whole_rate_limit)


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """How upstream throttling answers (429, optionally 503) are retried."""

    attempts: int = setting(whole, default=4)  # the first included; 1 disables retries
    backoff: float = setting(positive, default=0.25)
    max_backoff: float = setting(positive, default=8.0)
    # From the request's arrival; a longer delay ends the retries.
    max_wait: float = setting(non_negative, default=30.0)
    # Bodies up to this size are buffered so they can be replayed.
    max_body: int = setting(byte_count, default=1024 * 1024)
    on: tuple[int, ...] = setting(statuses(*RETRYABLE_STATUSES), default=(429,))
    # Retries in flight at most this share of requests in flight.
    budget: float = setting(share, default=0.2)


@dataclass(frozen=True, slots=True)
class RouteConfig:
    prefix: str = setting(parsed(route_prefix))
    upstream: Upstream = setting(parsed(upstream_url))
    auth: str | None = setting(text, default=None)  # an [auth.NAME] (the loader checks it)
    timeout: Timeout = setting(section(Timeout), default=Timeout())
    ca_file: str | None = setting(trusted_cas, default=None)
    # A client certificate for upstreams that require one (mTLS): both files or neither.
    cert_file: str | None = setting(pem_file, default=None)
    key_file: str | None = setting(pem_file, default=None)
    key_password: Secret | None = setting(optional_secret, default=None)
    rate_limit: RateLimitConfig | None = setting(RATE_LIMIT, default=None)
    retry: RetryConfig = setting(section(RetryConfig), default=RetryConfig())
    # Chunked request bodies are read whole before anything is sent, so a malformed chunk
    # never reaches the upstream; off, they stream after a 64 KiB read-ahead.
    request_buffering: bool = setting(flag, default=True)
    # Location and Content-Location naming the upstream are rewritten to the proxy's URL
    # (nginx's proxy_redirect default).
    rewrite_location: bool = setting(flag, default=True)


@dataclass(frozen=True, slots=True)
class RateConfig:
    """At most ``rate`` requests in any ``per`` seconds: a count, "0.5 a minute" means nothing."""

    rate: int = setting(whole)
    per: float = setting(positive, default=1.0)


@dataclass(frozen=True, slots=True)
class FetchRetry:
    """How often a failing token endpoint is asked again."""

    # First delay after a transient failure (connection, 5xx, 429).
    backoff: float = setting(positive, default=0.5)
    max_backoff: float = setting(positive, default=30.0)  # cap of the exponential backoff
    # Credentials refused: wait this, doubling up to 16x.
    rejected_backoff: float = setting(positive, default=60.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthCommon:
    """What every token scheme's table has: where to ask, how often, how long tokens live.
    A scheme is a subclass with its ``type``, its own keys, the request fields it sets
    itself (``reserved_params``) and what messages call its request (``scheme_name``)."""

    type: ClassVar[str]
    reserved_params: ClassVar[frozenset[str]]
    scheme_name: ClassVar[str]

    name: str  # the table's name, [auth.NAME]
    token_url: str = setting(token_endpoint)
    token_rate: RateConfig | None = setting(section(RateConfig), default=None)
    params: Mapping[str, str] = class_setting(request_params, factory=dict)
    ca_file: str | None = setting(trusted_cas, default=None)
    # A client certificate for token endpoints that require one (mTLS): both or neither.
    cert_file: str | None = setting(pem_file, default=None)
    key_file: str | None = setting(pem_file, default=None)
    key_password: Secret | None = setting(optional_secret, default=None)
    # Seconds a token lives when neither the answer nor a JWT exp says.
    default_lifetime: float = setting(positive, default=300.0)
    refresh_at: float = setting(fraction, default=0.8)  # of the lifetime
    fetch_retry: FetchRetry = setting(section(FetchRetry), default=FetchRetry())
    rate_limit: RateLimitConfig | None = setting(RATE_LIMIT, default=None)
    timeout: Timeout = setting(section(Timeout), default=Timeout(connect=10.0, read=30.0))


@dataclass(frozen=True, slots=True, kw_only=True)
class OAuth2Auth(AuthCommon):
    """What both OAuth2 grants send: the client, how it authenticates, the scope."""

    reserved_params: ClassVar[frozenset[str]] = OAUTH2_RESERVED_PARAMS
    scheme_name: ClassVar[str] = "OAuth2"

    client_id: str = setting(text)
    client_secret: Secret | None = setting(secret, default=None)
    client_auth: str = setting(choice(*CLIENT_AUTH_MODES), default="post")
    scope: str | None = setting(text, default=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientCredentialsAuth(OAuth2Auth):
    """OAuth2 client_credentials (Cognito, Keycloak service accounts)."""

    type: ClassVar[str] = "client_credentials"
    client_secret: Secret = setting(secret)  # Cognito app clients always have one

    @property
    def secrets(self) -> tuple[Secret, ...]:
        return (self.client_secret,)


@dataclass(frozen=True, slots=True, kw_only=True)
class PasswordAuth(OAuth2Auth):
    """OAuth2 password grant (Keycloak customer users); public clients have no secret."""

    type: ClassVar[str] = "password"
    scope: str = setting(text, default=DEFAULT_PASSWORD_SCOPE)
    username: str = setting(text)
    password: Secret = setting(secret)

    @property
    def secrets(self) -> tuple[Secret, ...]:
        if self.client_secret is None:
            return (self.password,)
        return (self.client_secret, self.password)


@dataclass(frozen=True, slots=True, kw_only=True)
class TravelyzerAuth(AuthCommon):
    """Travelyzer's API-key exchange."""

    type: ClassVar[str] = "travelyzer"
    reserved_params: ClassVar[frozenset[str]] = TRAVELYZER_RESERVED_PARAMS
    scheme_name: ClassVar[str] = "Travelyzer"

    api_key: Secret = setting(secret)
    api_secret: Secret = setting(secret)
    expires_in: str = setting(choice(*TRAVELYZER_EXPIRES_IN), default="24h")

    @property
    def secrets(self) -> tuple[Secret, ...]:
        return (self.api_key, self.api_secret)


# One typed table per scheme, so that every field a scheme needs is there by construction.
AuthConfig: TypeAlias = ClientCredentialsAuth | PasswordAuth | TravelyzerAuth
# An [auth.NAME] table: its type picks the scheme; it takes the keys of them all, a key of
# another scheme refused as not applying.
_SCHEMES: Final = (ClientCredentialsAuth, PasswordAuth, TravelyzerAuth)
AUTH_TYPES: Final = tuple(cls.type for cls in _SCHEMES)
AUTH: Final = OneOf("type", choice(*AUTH_TYPES), *_SCHEMES)


def egress_proxy(checks: Checks, value: Any, path: str, default: Secret | None) -> Secret | None:
    """ "env" or an http:// proxy URL, kept as a Secret: it may hold the proxy's password,
    so no problem shows it."""
    found = checks.text(value, path, secret=True)
    if found is None or found == ENV:
        return default if found is None else Secret(found)
    try:
        parse_proxy_url(found)
    except ValueError as exc:
        checks.fail(path, f'must be "env" or an http://[user:password@]host:port URL: {exc}')
        return default
    return Secret(found)


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """``[server] tls``: the listener speaks HTTPS with this certificate (its chain after
    it in cert_file); SIGHUP loads the files again for new connections."""

    cert_file: str = setting(pem_file)
    key_file: str = setting(pem_file)
    key_password: Secret | None = setting(optional_secret, default=None)
    # Clients must (or, "optional", may) present a certificate signed by a CA of ca_file.
    ca_file: str | None = setting(trusted_cas, default=None)
    client_auth: str | None = setting(choice(*CLIENT_CERTIFICATES), default=None)


LISTENER_TLS: Final = section(ListenerTls, then=whole_listener_tls)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    # An explicitly empty string is a problem, never the default.
    host: str = setting(listen_host, default="127.0.0.1")
    port: int = setting(port_number, default=8080)
    # Source networks allowed to talk to the proxy at all; empty: everyone.
    allow: tuple[IPv4Network | IPv6Network, ...] = setting(networks, default=())
    client_key_header: str = setting(header_name, default="X-Proxy-Key")
    # Who may read /-/metrics and /-/status: "any", "loopback" or "client:NAME".
    admin_access: AdminAccess = setting(parsed(AdminAccess.parse), default=AdminAccess())
    # Seconds in-flight requests get to finish on stop (after drain_delay) and reload.
    # 5 + 20 ends before Kubernetes' 30 s terminationGracePeriodSeconds sends SIGKILL.
    shutdown_grace: float = setting(non_negative, default=20.0)
    # Seconds from SIGTERM to closing the listener: /-/ready says 503 meanwhile, so load
    # balancers take the process out before it stops accepting.
    drain_delay: float = setting(non_negative, default=5.0)
    workers: int = setting(whole, default=1)
    # Peers whose X-Forwarded-For / Forwarded we extend instead of replacing.
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = setting(networks, default=())
    # Our pseudonym in Via; a request already carrying it is a loop. None: no Via at all.
    via: str | None = setting(via_name, default="authproxy")
    # Seconds a client has to send a whole request head.
    header_timeout: float = setting(positive, default=10.0)
    # Seconds of silence from a client (keep-alive, body, reads).
    idle_timeout: float = setting(positive, default=60.0)
    # Client connections; past it new ones get a fast 503.
    max_connections: int = setting(whole, default=10000)
    # Requests being handled; past it a fast 503.
    max_in_flight: int = setting(whole, default=4096)
    # Buffered chunked bodies past 64 KiB; None: the temp dir.
    spool_dir: str | None = setting(directory, default=None)
    # A longer buffered chunked body gets 413.
    max_buffered_body: int = setting(whole, default=1024**3)
    # All spooled bodies at once; past it 503.
    max_spooled_total: int = setting(whole, default=8 * 1024**3)
    # Host names (name or name:port) this proxy answers for; empty: any Host, and
    # absolute-form targets are refused. Guards against DNS rebinding.
    hosts: tuple[str, ...] = setting(host_names, default=())
    # Upstreams and token endpoints through a forward proxy: "env" (HTTPS_PROXY and the
    # rest) or a URL. None: direct, even when those variables are set.
    egress_proxy: Secret | None = setting(egress_proxy, default=None)
    # Hosts reached directly all the same, as NO_PROXY writes them (added to NO_PROXY's).
    egress_no_proxy: str | None = setting(text, default=None)
    # HTTPS on the listener; None: plain HTTP.
    tls: ListenerTls | None = setting(LISTENER_TLS, default=None)
    # Access lines for /-/health and /-/ready (probes); metrics count them either way.
    access_log_probes: bool = setting(flag, default=True)


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """A caller of the proxy, known by its key."""

    name: str  # the table's name, [clients.NAME]
    key: Secret = setting(client_key)
    # Allowed prefixes (the loader checks each is a route's); None: all.
    routes: tuple[str, ...] | None = setting(prefix_list, default=None)
    rate_limit: RateLimitConfig | None = setting(RATE_LIMIT, default=None)
    # Route prefix -> auth table (the loader checks both exist).
    auth: Mapping[str, str] = setting(prefix_table, factory=dict)


# Where limits, pauses and tokens are kept (proxy/state/): this process's memory, or a
# Redis the processes of a fleet share.
STATE_BACKENDS: Final = ("local", "redis")


@dataclass(frozen=True, slots=True)
class StateConfig:
    """``[state]``: the backend the runtime opens (proxy/runtime.py ``open_state``)."""

    backend: str = setting(choice(*STATE_BACKENDS), default="local")
    # redis://, rediss:// or unix://; a Secret: its password must never be shown.
    url: Secret | None = setting(redis_url, default=None)
    key_prefix: str = setting(text, default="authproxy:")
    timeout: float = setting(positive, default=0.1)  # any one Redis call, connect included
    lease: float = setting(lease_seconds, default=0.02)  # a limit's rate one lease may hold
    on_failure: str = setting(choice("local", "closed"), default="local")
    fallback_share: int | None = setting(fleet_share, default=None)  # None: "auto"
    encryption_key: Secret | None = setting(optional_secret, default=None)


# The [state] table: its keys, then the keys together (a redis backend needs its url).
STATE: Final = section(StateConfig, then=whole_state)


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    routes: tuple[RouteConfig, ...]
    auth: Mapping[str, AuthConfig]
    clients: Mapping[str, ClientConfig] = field(default_factory=dict)
    state: StateConfig = field(default_factory=StateConfig)
    # What string keys read from files (${file:PATH}): the log redactor treats each as a
    # secret, whatever the key.
    from_files: tuple[Secret, ...] = field(default=(), repr=False, compare=False)
