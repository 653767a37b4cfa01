"""routes.toml -> frozen dataclasses.

Loading happens once, at start-up: ``${VAR}`` references are resolved from the environment,
every table is checked, and *all* problems are reported together in one :class:`ConfigError`
whose lines name the dotted key (``routes[1].upstream``), the bad value and what is allowed.
Secret values are wrapped in :class:`Secret` so that no repr, log line or error message can
show them.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from .errors import ConfigError

_ENV_REF: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# A prefix is one or more path segments of unreserved/sub-delim characters; "." and ".."
# segments are refused separately so a prefix can never climb out of itself.
_PREFIX_SEGMENT: Final = re.compile(r"[A-Za-z0-9_~!$&'()*+,;=:@.-]+")

AUTH_TYPES: Final = ("client_credentials", "password", "travelyzer")
CLIENT_AUTH_MODES: Final = ("post", "basic")
# The values Travelyzer documents for expiresIn; anything else is refused by the vendor.
TRAVELYZER_EXPIRES_IN: Final = ("30m", "1h", "24h", "7d", "30d")


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
    scope: str | None = None
    username: str | None = None
    password: Secret | None = None
    api_key: Secret | None = None
    api_secret: Secret | None = None
    expires_in: str = "24h"
    token_rate: RateConfig | None = None
    params: Mapping[str, str] = field(default_factory=dict)
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


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    routes: tuple[RouteConfig, ...]
    auth: Mapping[str, AuthConfig]


_DEFAULT_TIMEOUT: Final = Timeout()
_DEFAULT_TOKEN_TIMEOUT: Final = Timeout(connect=10.0, read=30.0)
_DEFAULT_FETCH_RETRY: Final = FetchRetry()
_DEFAULT_RETRY: Final = RetryConfig()
RETRYABLE_STATUSES: Final = (429, 503)
_DEFAULT_SERVER: Final = ServerConfig()


def load(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, resolve and validate a routes.toml file; raise ConfigError listing every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read config file {str(path)!r}: {exc.strerror}"]) from exc
    return loads(text, env, base_dir=Path(path).parent)


def loads(text: str, env: Mapping[str, str] | None = None, base_dir: Path | None = None) -> Config:
    """Like :func:`load`, from TOML text; relative ``ca_file`` paths resolve against base_dir."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"invalid TOML: {exc}"]) from exc
    checker = _Checker(os.environ if env is None else env, base_dir or Path.cwd())
    config = checker.config(raw)
    if checker.problems:
        raise ConfigError(checker.problems)
    return config


class _Checker:
    """Walks the raw TOML once, collecting problems instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str], base_dir: Path) -> None:
        self.env = env
        self.base_dir = base_dir
        self.problems: list[str] = []

    def fail(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    # -- primitives ---------------------------------------------------------------------

    def table(self, raw: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.fail(key, f"must be a table, got {_type_name(raw)}")
            return {}
        for name in raw:
            if name not in allowed:
                self.fail(_join(key, name), f"unknown key (allowed: {', '.join(allowed)})")
        return raw

    def string(
        self,
        table: dict[str, Any],
        key: str,
        name: str,
        *,
        required: bool = False,
        secret: bool = False,
    ) -> str | None:
        path = _join(key, name)
        if name not in table:
            if required:
                self.fail(path, "is required")
            return None
        value = table[name]
        if not isinstance(value, str):
            self.fail(path, f"must be a string, got {_type_name(value)}")
            return None
        resolved = self.interpolate(value, path)
        if resolved is not None and required and not resolved:
            shown = "" if secret else f" (after resolving {value!r})"
            self.fail(path, f"must not be empty{shown}")
            return None
        return resolved

    def secret(
        self, table: dict[str, Any], key: str, name: str, *, required: bool = False
    ) -> Secret | None:
        value = self.string(table, key, name, required=required, secret=True)
        return None if value is None else Secret(value)

    def positive(self, table: dict[str, Any], key: str, name: str, default: float) -> float:
        path = _join(key, name)
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, f"must be a number, got {_type_name(value)}")
            return default
        if value <= 0:
            self.fail(path, f"must be greater than 0, got {value!r}")
            return default
        return float(value)

    def non_negative(self, table: dict[str, Any], key: str, name: str, default: float) -> float:
        path = _join(key, name)
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            self.fail(path, f"must be a number of at least 0, got {value!r}")
            return default
        return float(value)

    def choice(
        self,
        table: dict[str, Any],
        key: str,
        name: str,
        allowed: tuple[str, ...],
        default: str | None,
    ) -> str | None:
        value = self.string(table, key, name, required=default is None)
        if value is None:
            return default
        if value not in allowed:
            self.fail(_join(key, name), f"must be one of {', '.join(allowed)}, got {value!r}")
            return default
        return value

    def interpolate(self, value: str, key: str) -> str | None:
        missing: list[str] = []

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.env:
                return self.env[name]
            if default is not None:
                return default
            missing.append(name)
            return ""

        resolved = _ENV_REF.sub(replace, value)
        for name in missing:
            self.fail(
                key,
                f"environment variable {name} is not set "
                f"(write ${{{name}:-default}} to make it optional)",
            )
        return None if missing else resolved

    def file(self, table: dict[str, Any], key: str, name: str) -> str | None:
        value = self.string(table, key, name)
        if value is None:
            return None
        path = Path(value)
        if not path.is_absolute():
            path = self.base_dir / path
        if not path.is_file():
            self.fail(_join(key, name), f"file not found: {value!r}")
            return None
        return str(path)

    # -- tables ---------------------------------------------------------------------------

    def config(self, raw: dict[str, Any]) -> Config:
        self.table(raw, "", ("server", "routes", "auth"))
        server = self.server(raw.get("server", {}))
        auth_raw = raw.get("auth", {})
        auth: dict[str, AuthConfig] = {}
        for name, table in self.table(
            auth_raw, "auth", tuple(auth_raw) if isinstance(auth_raw, dict) else ()
        ).items():
            parsed = self.auth(name, table)
            if parsed is not None:
                auth[name] = parsed
        routes_raw = raw.get("routes", [])
        routes: list[RouteConfig] = []
        if not isinstance(routes_raw, list):
            self.fail(
                "routes", f"must be an array of tables ([[routes]]), got {_type_name(routes_raw)}"
            )
            routes_raw = []
        seen: dict[str, int] = {}
        for index, table in enumerate(routes_raw):
            key = f"routes[{index}]"
            route = self.route(table, key, auth_raw if isinstance(auth_raw, dict) else {})
            if route is None:
                continue
            if route.prefix in seen:
                self.fail(
                    f"{key}.prefix",
                    f"duplicate prefix {route.prefix!r} (also routes[{seen[route.prefix]}])",
                )
                continue
            seen[route.prefix] = index
            routes.append(route)
        return Config(server=server, routes=tuple(routes), auth=auth)

    def server(self, raw: Any) -> ServerConfig:
        table = self.table(raw, "server", ("host", "port"))
        host = self.string(table, "server", "host") or _DEFAULT_SERVER.host
        port = table.get("port", _DEFAULT_SERVER.port)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            self.fail("server.port", f"must be an integer from 0 to 65535, got {port!r}")
            port = _DEFAULT_SERVER.port
        return ServerConfig(host=host, port=port)

    def route(self, raw: Any, key: str, auth_tables: dict[str, Any]) -> RouteConfig | None:
        table = self.table(
            raw,
            key,
            ("prefix", "upstream", "auth", "timeout", "ca_file", "rate_limit", "retry"),
        )
        prefix = self.string(table, key, "prefix", required=True)
        upstream_text = self.string(table, key, "upstream", required=True)
        auth = self.string(table, key, "auth")
        timeout = self.timeout(table.get("timeout", {}), f"{key}.timeout")
        ca_file = self.file(table, key, "ca_file")
        rate_limit = self.rate_limit(table.get("rate_limit"), f"{key}.rate_limit")
        retry = self.retry(table.get("retry", {}), f"{key}.retry")
        if prefix is not None:
            prefix = self.prefix(prefix, f"{key}.prefix")
        upstream = None
        if upstream_text is not None:
            upstream = self.upstream(upstream_text, f"{key}.upstream")
        if auth is not None and auth not in auth_tables:
            known = ", ".join(sorted(auth_tables)) or "none defined"
            self.fail(f"{key}.auth", f"no [auth.{auth}] table (defined: {known})")
        if prefix is None or upstream is None:
            return None
        return RouteConfig(
            prefix=prefix,
            upstream=upstream,
            auth=auth,
            timeout=timeout,
            ca_file=ca_file,
            rate_limit=rate_limit,
            retry=retry,
        )

    def rate_limit(self, raw: Any, key: str) -> RateLimitConfig | None:
        if raw is None:
            return None
        table = self.table(raw, key, ("rate", "per", "burst", "max_wait"))
        if "rate" not in table:
            self.fail(f"{key}.rate", "is required")
        rate = self.positive(table, key, "rate", 1.0)
        burst = self.positive(table, key, "burst", rate)
        if burst < 1:
            self.fail(f"{key}.burst", f"must be at least 1, got {burst!r}")
            burst = rate
        return RateLimitConfig(
            rate=rate,
            per=self.positive(table, key, "per", 1.0),
            burst=burst,
            max_wait=self.non_negative(table, key, "max_wait", 5.0),
        )

    def retry(self, raw: Any, key: str) -> RetryConfig:
        names = ("attempts", "backoff", "max_backoff", "max_wait", "max_body", "on", "budget")
        table = self.table(raw, key, names)
        default = _DEFAULT_RETRY
        attempts = table.get("attempts", default.attempts)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            self.fail(f"{key}.attempts", f"must be a whole number of at least 1, got {attempts!r}")
            attempts = default.attempts
        max_body = table.get("max_body", default.max_body)
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 0:
            self.fail(f"{key}.max_body", f"must be a whole number of bytes, got {max_body!r}")
            max_body = default.max_body
        on = table.get("on", list(default.on))
        if not isinstance(on, list) or not on or any(s not in RETRYABLE_STATUSES for s in on):
            allowed = ", ".join(map(str, RETRYABLE_STATUSES))
            self.fail(f"{key}.on", f"must be a list of statuses from {allowed}, got {on!r}")
            on = list(default.on)
        budget = self.positive(table, key, "budget", default.budget)
        if budget > 1:
            self.fail(f"{key}.budget", f"must be a share between 0 and 1, got {table['budget']!r}")
            budget = default.budget
        return RetryConfig(
            attempts=attempts,
            backoff=self.positive(table, key, "backoff", default.backoff),
            max_backoff=self.positive(table, key, "max_backoff", default.max_backoff),
            max_wait=self.non_negative(table, key, "max_wait", default.max_wait),
            max_body=max_body,
            on=tuple(sorted(set(on))),
            budget=budget,
        )

    def prefix(self, value: str, key: str) -> str | None:
        if not value.startswith("/"):
            self.fail(key, f"must start with '/', got {value!r}")
            return None
        if value == "/":
            return value
        segments = value[1:].split("/")
        if value.endswith("/"):
            self.fail(key, f"must not end with '/', got {value!r} (write {value.rstrip('/')!r})")
            return None
        if any(not _PREFIX_SEGMENT.fullmatch(s) or s in (".", "..") for s in segments):
            self.fail(
                key,
                f"must be plain path segments (letters, digits, -._~ and "
                f"sub-delimiters; no '.', '..', '%' or empty segments), got {value!r}",
            )
            return None
        if segments[0] == "-":
            self.fail(key, "the /-/ prefix is reserved for the proxy's own endpoints")
            return None
        return value

    def upstream(self, value: str, key: str) -> Upstream | None:
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError as exc:
            self.fail(key, f"invalid URL {value!r}: {exc}")
            return None
        if parts.scheme not in ("http", "https"):
            self.fail(key, f"must be an http:// or https:// URL, got {value!r}")
            return None
        if not parts.hostname:
            self.fail(key, f"has no host: {value!r}")
            return None
        if parts.query or parts.fragment or value.endswith(("?", "#")):
            self.fail(key, f"must not have a query or fragment: {value!r}")
            return None
        if parts.username is not None or parts.password is not None:
            self.fail(key, "must not carry user:password@ (configure an auth table instead)")
            return None
        segments = parts.path.split("/")
        if any(s.lower() in (".", "..", "%2e", "%2e%2e", ".%2e", "%2e.") for s in segments):
            self.fail(key, f"base path must not contain '.' or '..' segments: {value!r}")
            return None
        host = parts.hostname
        if ":" in host:
            host = f"[{host}]"
        default_port = 443 if parts.scheme == "https" else 80
        return Upstream(
            scheme=parts.scheme,
            host=host,
            port=port or default_port,
            base_path=parts.path.rstrip("/"),
        )

    def token_url(self, value: str, key: str) -> str | None:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises for a port that is not a number 0-65535
        except ValueError:
            self.fail(key, "invalid URL (bad port?)")
            return None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # The value itself is not echoed: a mistyped URL may hold credentials.
            found = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
            self.fail(key, f"must be an http:// or https:// URL with a host ({found})")
            return None
        if parts.username is not None or parts.password is not None or parts.query:
            # Credentials belong in their own keys, where they are kept secret.
            self.fail(key, "must not carry user:password@ or a query string")
            return None
        if any(c.isspace() for c in value):
            self.fail(key, "must not contain white space")
            return None
        return value

    def timeout(self, raw: Any, key: str, default: Timeout = _DEFAULT_TIMEOUT) -> Timeout:
        table = self.table(raw, key, ("connect", "read"))
        return Timeout(
            connect=self.positive(table, key, "connect", default.connect),
            read=self.positive(table, key, "read", default.read),
        )

    def fetch_retry(self, raw: Any, key: str) -> FetchRetry:
        table = self.table(raw, key, ("backoff", "max_backoff", "rejected_backoff"))
        default = _DEFAULT_FETCH_RETRY
        return FetchRetry(
            backoff=self.positive(table, key, "backoff", default.backoff),
            max_backoff=self.positive(table, key, "max_backoff", default.max_backoff),
            rejected_backoff=self.positive(
                table, key, "rejected_backoff", default.rejected_backoff
            ),
        )

    def rate(self, raw: Any, key: str) -> RateConfig:
        table = self.table(raw, key, ("rate", "per"))
        rate = table.get("rate")
        if rate is None:
            self.fail(f"{key}.rate", "is required")
            rate = 1
        elif isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
            # A count of requests per window: "at most 0.5 per minute" has no meaning.
            self.fail(f"{key}.rate", f"must be a whole number of at least 1, got {rate!r}")
            rate = 1
        return RateConfig(rate=rate, per=self.positive(table, key, "per", 1.0))

    def auth(self, name: str, raw: Any) -> AuthConfig | None:
        key = f"auth.{name}"
        table = self.table(
            raw,
            key,
            (
                "type",
                "token_url",
                "client_id",
                "client_secret",
                "client_auth",
                "scope",
                "username",
                "password",
                "api_key",
                "api_secret",
                "expires_in",
                "token_rate",
                "params",
                "ca_file",
                "default_lifetime",
                "refresh_at",
                "fetch_retry",
                "rate_limit",
                "timeout",
            ),
        )
        kind = self.choice(table, key, "type", AUTH_TYPES, None)
        token_url = self.string(table, key, "token_url", required=True)
        if token_url is not None:
            token_url = self.token_url(token_url, f"{key}.token_url")
        oauth = kind in ("client_credentials", "password")
        client_id = self.string(table, key, "client_id", required=oauth)
        # Keycloak public clients have no secret; Cognito app clients always do.
        client_secret = self.secret(
            table, key, "client_secret", required=kind == "client_credentials"
        )
        client_auth = self.choice(table, key, "client_auth", CLIENT_AUTH_MODES, "post")
        scope = self.string(table, key, "scope")
        username = self.string(table, key, "username", required=kind == "password")
        password = self.secret(table, key, "password", required=kind == "password")
        api_key = self.secret(table, key, "api_key", required=kind == "travelyzer")
        api_secret = self.secret(table, key, "api_secret", required=kind == "travelyzer")
        expires_in = self.choice(table, key, "expires_in", TRAVELYZER_EXPIRES_IN, "24h")
        token_rate = (
            self.rate(table["token_rate"], f"{key}.token_rate") if "token_rate" in table else None
        )
        params = self.params(table.get("params", {}), f"{key}.params")
        ca_file = self.file(table, key, "ca_file")
        default_lifetime = self.positive(table, key, "default_lifetime", 300.0)
        refresh_at = self.positive(table, key, "refresh_at", 0.8)
        if refresh_at >= 1:
            self.fail(f"{key}.refresh_at", f"must be a fraction below 1, got {refresh_at!r}")
            refresh_at = 0.8
        fetch_retry = self.fetch_retry(table.get("fetch_retry", {}), f"{key}.fetch_retry")
        rate_limit = self.rate_limit(table.get("rate_limit"), f"{key}.rate_limit")
        timeout = self.timeout(table.get("timeout", {}), f"{key}.timeout", _DEFAULT_TOKEN_TIMEOUT)
        if kind is None or token_url is None:
            return None
        for field_name, applies in (
            ("username", kind == "password"),
            ("password", kind == "password"),
            ("api_key", kind == "travelyzer"),
            ("api_secret", kind == "travelyzer"),
            ("expires_in", kind == "travelyzer"),
            ("client_id", oauth),
            ("client_secret", oauth),
            ("client_auth", oauth),
            ("scope", oauth),
        ):
            if field_name in table and not applies:
                self.fail(f"{key}.{field_name}", f"does not apply to type = {kind!r}")
        return AuthConfig(
            name=name,
            type=kind,
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            client_auth=client_auth or "post",
            scope=scope,
            username=username,
            password=password,
            api_key=api_key,
            api_secret=api_secret,
            expires_in=expires_in or "24h",
            token_rate=token_rate,
            params=params,
            ca_file=ca_file,
            default_lifetime=default_lifetime,
            refresh_at=refresh_at,
            fetch_retry=fetch_retry,
            rate_limit=rate_limit,
            timeout=timeout,
        )

    def params(self, raw: Any, key: str) -> dict[str, str]:
        table = self.table(raw, key, tuple(raw) if isinstance(raw, dict) else ())
        out: dict[str, str] = {}
        for name in table:
            value = self.string(table, key, name)
            if value is not None:
                out[name] = value
        return out


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _type_name(value: Any) -> str:
    return {
        dict: "a table",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(value), type(value).__name__)
