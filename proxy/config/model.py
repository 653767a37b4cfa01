"""The configuration's typed form: frozen dataclasses, built and checked once by loader.py.

Secret values are wrapped in :class:`Secret` so that no repr, log line or error message can
show them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Final, Literal

AUTH_TYPES: Final = ("client_credentials", "password", "travelyzer")
CLIENT_AUTH_MODES: Final = ("post", "basic")
# The values Travelyzer documents for expiresIn; anything else is refused by the vendor.
TRAVELYZER_EXPIRES_IN: Final = ("30m", "1h", "24h", "7d", "30d")
# Request fields a scheme sets itself: ``params`` may add fields, never replace these.
OAUTH2_RESERVED_PARAMS: Final = frozenset(
    {"grant_type", "client_id", "client_secret", "username", "password", "refresh_token", "scope"}
)
TRAVELYZER_RESERVED_PARAMS: Final = frozenset({"apiKey", "apiSecret", "expiresIn"})


class Secret:
    """A credential from the config; its repr and str never show the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    @staticmethod
    def required(secret: Secret | None, key: str) -> str:
        """The value of a secret that validation made mandatory for this auth type."""
        if secret is None:
            raise ValueError(f"{key} is required")
        return secret._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class AdminAccess:
    """Who may read /-/metrics and /-/status (``server.admin_access``): anyone, a peer on
    this host (``loopback``), or the one client named (``client:NAME``)."""

    scope: Literal["any", "loopback", "client"] = "any"
    client: str | None = None  # the [clients.NAME] when scope is "client"

    @classmethod
    def parse(cls, text: str) -> AdminAccess:
        """``any``, ``loopback`` or ``client:NAME``; ValueError says what is allowed."""
        if text == "any":
            return cls("any")
        if text == "loopback":
            return cls("loopback")
        if text.startswith("client:"):
            return cls("client", text.removeprefix("client:"))
        raise ValueError(f"must be any, loopback or client:NAME, got {text!r}")


@dataclass(frozen=True, slots=True)
class Timeout:
    connect: float = 10.0
    read: float = 60.0


@dataclass(frozen=True, slots=True)
class Upstream:
    """An upstream origin plus an optional base path (percent-encoded, no trailing slash)."""

    scheme: str
    host: str  # as URL.build wants it: IPv6 literals keep their brackets
    port: int
    base_path: str

    @property
    def url(self) -> str:
        default = 443 if self.scheme == "https" else 80
        port = "" if self.port == default else f":{self.port}"
        return f"{self.scheme}://{self.host}{port}{self.base_path}"


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """``rate`` requests per ``per`` seconds sustained, bursts of up to ``burst``."""

    rate: float
    per: float = 1.0
    burst: float = 0.0  # 0: same as rate
    max_wait: float = 5.0  # longest a request waits in line before it gets 429

    @property
    def capacity(self) -> float:
        return self.burst or self.rate


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """How upstream throttling answers (429, optionally 503) are retried."""

    attempts: int = 4  # total attempts, the first included; 1 disables retries
    backoff: float = 0.25
    max_backoff: float = 8.0
    max_wait: float = 30.0  # from the request's arrival; a longer delay ends the retries
    max_body: int = 1024 * 1024  # bodies up to this size are buffered so they can be replayed
    on: tuple[int, ...] = (429,)
    budget: float = 0.2  # retries in flight at most this share of requests in flight


@dataclass(frozen=True, slots=True)
class RouteConfig:
    prefix: str
    upstream: Upstream
    auth: str | None = None
    timeout: Timeout = field(default_factory=Timeout)
    ca_file: str | None = None
    rate_limit: RateLimitConfig | None = None
    retry: RetryConfig = field(default_factory=RetryConfig)
    # Chunked request bodies are read whole before anything is sent, so a malformed chunk
    # never reaches the upstream; off, they stream after a 64 KiB read-ahead.
    request_buffering: bool = True
    # Location and Content-Location naming the upstream are rewritten to the proxy's URL
    # (nginx's proxy_redirect default).
    rewrite_location: bool = True


@dataclass(frozen=True, slots=True)
class RateConfig:
    rate: float
    per: float


@dataclass(frozen=True, slots=True)
class FetchRetry:
    """How often a failing token endpoint is asked again."""

    backoff: float = 0.5  # first delay after a transient failure (connection, 5xx, 429)
    max_backoff: float = 30.0  # cap of the exponential backoff
    rejected_backoff: float = 60.0  # credentials refused: wait this, doubling up to 16x


@dataclass(frozen=True, slots=True)
class AuthConfig:
    name: str
    type: str
    token_url: str
    client_id: str | None = None
    client_secret: Secret | None = None
    client_auth: str = "post"
    scope: str | None = None  # the loader defaults it to "openid" for type = "password"
    username: str | None = None
    password: Secret | None = None
    api_key: Secret | None = None
    api_secret: Secret | None = None
    expires_in: str = "24h"
    token_rate: RateConfig | None = None
    params: Mapping[str, str] = field(default_factory=dict)  # never a reserved field name
    ca_file: str | None = None
    default_lifetime: float = 300.0
    refresh_at: float = 0.8
    fetch_retry: FetchRetry = field(default_factory=FetchRetry)
    rate_limit: RateLimitConfig | None = None
    timeout: Timeout = field(default_factory=lambda: Timeout(connect=10.0, read=30.0))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # Source networks allowed to talk to the proxy at all; empty: everyone.
    allow: tuple[IPv4Network | IPv6Network, ...] = ()
    client_key_header: str = "X-Proxy-Key"
    # Who may read /-/metrics and /-/status: "any", "loopback" or "client:NAME".
    admin_access: AdminAccess = AdminAccess()
    shutdown_grace: float = 30.0  # seconds in-flight requests get to finish on stop/reload
    workers: int = 1
    # Peers whose X-Forwarded-For / Forwarded we extend instead of replacing.
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    # Our pseudonym in Via; a request already carrying it is a loop. None: no Via at all.
    via: str | None = "authproxy"
    header_timeout: float = 10.0  # seconds a client has to send a whole request head
    idle_timeout: float = 60.0  # seconds of silence from a client (keep-alive, body, reads)
    max_connections: int = 10000  # client connections; past it new ones get a fast 503
    max_in_flight: int = 4096  # requests being handled; past it a fast 503
    # Host names (name or name:port) this proxy answers for; empty: any Host, and
    # absolute-form targets are refused. Guards against DNS rebinding.
    hosts: tuple[str, ...] = ()
    spool_dir: str | None = None  # buffered chunked bodies past 64 KiB; None: the temp dir
    max_buffered_body: int = 1024**3  # a longer buffered chunked body gets 413
    max_spooled_total: int = 8 * 1024**3  # all spooled bodies at once; past it 503


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """A caller of the proxy, known by its key."""

    name: str
    key: Secret
    routes: tuple[str, ...] | None = None  # allowed prefixes; None: all
    rate_limit: RateLimitConfig | None = None
    auth: Mapping[str, str] = field(default_factory=dict)  # route prefix -> auth table


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    routes: tuple[RouteConfig, ...]
    auth: Mapping[str, AuthConfig]
    clients: Mapping[str, ClientConfig] = field(default_factory=dict)
