"""Loading routes.toml: resolve ${VAR} references, check every key, report every problem."""

from __future__ import annotations

import codecs
import math
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from pathlib import Path
from typing import Any, Final
from urllib.parse import SplitResult, urlsplit

from ..errors import ConfigError
from ..http.authority import NUMERIC_LABEL, listen_host_problem, split_authority
from .checks import Checks, _type_name
from .model import (
    AUTH_TYPES,
    CLIENT_AUTH_MODES,
    OAUTH2_RESERVED_PARAMS,
    TRAVELYZER_EXPIRES_IN,
    TRAVELYZER_RESERVED_PARAMS,
    AdminAccess,
    AuthConfig,
    ClientConfig,
    Config,
    FetchRetry,
    RateConfig,
    RateLimitConfig,
    RetryConfig,
    RouteConfig,
    Secret,
    ServerConfig,
    Timeout,
    Upstream,
)

_HEADER_NAME: Final = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
# A prefix is one or more path segments of unreserved/sub-delim characters; "." and ".."
# segments are refused separately so a prefix can never climb out of itself.
_PREFIX_SEGMENT: Final = re.compile(r"[A-Za-z0-9_~!$&'()*+,;=:@.-]+")
# RFC 3986 path: pchar and "/", where a '%' must start a %XX escape.
_PATH_CHARS: Final = re.compile(r"[A-Za-z0-9_~!$&'()*+,;=:@./%-]*")
_PERCENT_ESCAPES: Final = re.compile(r"(?:[^%]|%[0-9A-Fa-f]{2})*")
# A DNS label (letters, digits, '-' inside; '_' too, as Docker and some intranets use it).
_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
# Where params would name a field the scheme sets from its own key (hints in messages).
_PARAM_KEYS: Final = {
    "client_id": "client_id",
    "client_secret": "client_secret",
    "username": "username",
    "password": "password",
    "scope": "scope",
    "apiKey": "api_key",
    "apiSecret": "api_secret",
    "expiresIn": "expires_in",
}

# UTF-32 first: its little-endian mark starts with UTF-16's.
_OTHER_BOMS: Final = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, 'UTF-16 (Notepad\'s "Unicode")'),
    (codecs.BOM_UTF16_BE, 'UTF-16 (Notepad\'s "Unicode")'),
)

_DEFAULT_TIMEOUT: Final = Timeout()
_DEFAULT_TOKEN_TIMEOUT: Final = Timeout(connect=10.0, read=30.0)
_DEFAULT_FETCH_RETRY: Final = FetchRetry()
_DEFAULT_RETRY: Final = RetryConfig()
RETRYABLE_STATUSES: Final = (429, 503)
_DEFAULT_SERVER: Final = ServerConfig()


def load(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, resolve and validate a routes.toml file; raise ConfigError listing every problem."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read config file {str(path)!r}: {exc.strerror}"]) from exc
    return loads(_decode(data, str(path)), env, base_dir=Path(path).parent)


def _decode(data: bytes, path: str) -> str:
    """The text of a UTF-8 file; any other encoding is one problem saying how to fix it."""
    for bom, name in _OTHER_BOMS:
        if data.startswith(bom):
            # Windows editors save "Unicode" as UTF-16: the fix is in the editor's save dialog.
            raise ConfigError([f"config file {path!r} is {name}: save it as UTF-8"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [
                f"config file {path!r} is not UTF-8: byte 0x{data[exc.start]:02x} at offset "
                f"{exc.start} (line {line}) cannot be decoded; save it as UTF-8"
            ]
        ) from exc


def loads(text: str, env: Mapping[str, str] | None = None, base_dir: Path | None = None) -> Config:
    """Like :func:`load`, from TOML text; relative ``ca_file`` paths resolve against base_dir.
    A leading byte-order mark (as Windows editors write one) is skipped."""
    try:
        raw = tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"invalid TOML: {exc}"]) from exc
    checker = _Checker(os.environ if env is None else env, base_dir or Path.cwd())
    config = checker.config(raw)
    if checker.problems:
        raise ConfigError(checker.problems)
    return config


class _Checker(Checks):
    """Walks the raw TOML once, collecting problems instead of stopping at the first."""

    # -- tables ---------------------------------------------------------------------------

    def config(self, raw: dict[str, Any]) -> Config:
        self.table(raw, "", ("server", "routes", "auth", "clients"))
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
        clients_raw = raw.get("clients", {})
        clients: dict[str, ClientConfig] = {}
        names = tuple(clients_raw) if isinstance(clients_raw, dict) else ()
        for name, table in self.table(clients_raw, "clients", names).items():
            client = self.client(name, table, set(seen), auth)
            if client is not None:
                clients[name] = client
        keys: dict[Secret, str] = {}
        for name, client in clients.items():
            if client.key in keys:
                self.fail(f"clients.{name}.key", f"same key as clients.{keys[client.key]}")
            keys[client.key] = name
        admin = server.admin_access.client
        if admin is not None and admin not in clients:
            self.fail("server.admin_access", f"no [clients.{admin}]")
        return Config(server=server, routes=tuple(routes), auth=auth, clients=clients)

    def client(
        self, name: str, raw: Any, prefixes: set[str], auth: Mapping[str, AuthConfig]
    ) -> ClientConfig | None:
        key = f"clients.{name}"
        table = self.table(raw, key, ("key", "routes", "rate_limit", "auth"))
        secret = self.secret(table, key, "key", required=True)
        routes: tuple[str, ...] | None = None
        if "routes" in table:
            listed = table["routes"]
            if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
                self.fail(f"{key}.routes", "must be a list of route prefixes")
            else:
                unknown = [p for p in listed if p not in prefixes]
                if unknown:
                    self.fail(f"{key}.routes", f"no such route prefix: {', '.join(unknown)}")
                routes = tuple(listed)
        rate_limit = self.rate_limit(table.get("rate_limit"), f"{key}.rate_limit")
        overrides: dict[str, str] = {}
        raw_auth = table.get("auth", {})
        for prefix in self.table(
            raw_auth, f"{key}.auth", tuple(raw_auth) if isinstance(raw_auth, dict) else ()
        ):
            path = f"{key}.auth.{prefix!r}"
            value = raw_auth[prefix]
            if prefix not in prefixes:
                self.fail(path, "no such route prefix")
            elif not isinstance(value, str) or value not in auth:
                self.fail(path, f"no [auth.{value}] table")
            else:
                overrides[prefix] = value
        if secret is None:
            return None
        if len(secret.reveal()) < 16:
            self.fail(f"{key}.key", "must be at least 16 characters (use a random token)")
        if not all("!" <= c <= "~" for c in secret.reveal()):
            # The value is never shown; a stray newline from a secrets file is the usual cause.
            self.fail(
                f"{key}.key",
                "must be printable ASCII without spaces or control characters "
                "(clients send it as a header value)",
            )
        return ClientConfig(
            name=name, key=secret, routes=routes, rate_limit=rate_limit, auth=overrides
        )

    def server(self, raw: Any) -> ServerConfig:
        names = (
            "host",
            "port",
            "allow",
            "client_key_header",
            "admin_access",
            "shutdown_grace",
            "workers",
            "trusted_proxies",
            "via",
            "header_timeout",
            "idle_timeout",
            "max_connections",
            "max_in_flight",
            "spool_dir",
            "max_buffered_body",
            "max_spooled_total",
            "hosts",
        )
        table = self.table(raw, "server", names)
        default = _DEFAULT_SERVER
        # Explicitly empty strings are problems (string() says so), never the default.
        host = self.string(table, "server", "host")
        if host is None:
            host = default.host
        elif (host_problem := listen_host_problem(host, "server.port")) is not None:
            self.fail("server.host", host_problem)
            host = default.host
        port = table.get("port", default.port)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            self.fail("server.port", f"must be an integer from 0 to 65535, got {port!r}")
            port = default.port
        allow = self.networks(table, "allow")
        trusted = self.networks(table, "trusted_proxies")
        via: str | None = default.via
        if table.get("via") is False:
            via = None  # no Via at all (see README: server.via)
        elif table.get("via") is True:
            self.fail("server.via", "must be a name, or false to send no Via, got true")
        else:
            named = self.string(table, "server", "via")
            if named is not None and not _HEADER_NAME.fullmatch(named):
                self.fail("server.via", f"must be a token (letters, digits, -._~), got {named!r}")
            elif named is not None:
                via = named
        header = self.string(table, "server", "client_key_header")
        if header is None:
            header = default.client_key_header
        elif not _HEADER_NAME.fullmatch(header):
            self.fail("server.client_key_header", f"not a header name: {header!r}")
            header = default.client_key_header
        admin = default.admin_access
        admin_text = self.string(table, "server", "admin_access")
        if admin_text is not None:
            try:
                admin = AdminAccess.parse(admin_text)
            except ValueError as exc:
                self.fail("server.admin_access", str(exc))
        workers = self.whole(table, "workers", default.workers)
        spool_dir = self.directory(table, "server", "spool_dir")
        hosts = self.hosts(table.get("hosts", []))
        return ServerConfig(
            host=host,
            port=port,
            allow=allow,
            trusted_proxies=trusted,
            via=via,
            header_timeout=self.positive(table, "server", "header_timeout", default.header_timeout),
            idle_timeout=self.positive(table, "server", "idle_timeout", default.idle_timeout),
            max_connections=self.whole(table, "max_connections", default.max_connections),
            max_in_flight=self.whole(table, "max_in_flight", default.max_in_flight),
            spool_dir=spool_dir,
            hosts=hosts,
            max_buffered_body=self.whole(table, "max_buffered_body", default.max_buffered_body),
            max_spooled_total=self.whole(table, "max_spooled_total", default.max_spooled_total),
            client_key_header=header,
            admin_access=admin,
            shutdown_grace=self.non_negative(
                table, "server", "shutdown_grace", default.shutdown_grace
            ),
            workers=workers,
        )

    def networks(self, table: dict[str, Any], name: str) -> tuple[IPv4Network | IPv6Network, ...]:
        found: list[IPv4Network | IPv6Network] = []
        listed = table.get(name, [])
        if not isinstance(listed, list):
            self.fail(f"server.{name}", "must be a list of CIDR networks")
            listed = []
        for index, cidr in enumerate(listed):
            try:
                if not isinstance(cidr, str):
                    raise TypeError(cidr)  # ip_network(10) would be 0.0.0.10/32
                found.append(ip_network(cidr, strict=False))
            except (TypeError, ValueError):
                self.fail(f"server.{name}[{index}]", f"not a CIDR network: {cidr!r}")
        return tuple(found)

    def hosts(self, listed: Any) -> tuple[str, ...]:
        if not isinstance(listed, list):
            self.fail("server.hosts", "must be a list of host names (name or name:port)")
            return ()
        found = []
        for index, host in enumerate(listed):
            try:
                if not isinstance(host, str):
                    raise TypeError(host)
                split_authority(host)
            except (TypeError, ValueError):
                self.fail(
                    f"server.hosts[{index}]",
                    f"not a host name or name:port (IPv6 in brackets): {host!r}",
                )
                continue
            found.append(host)
        return tuple(found)

    def whole(self, table: dict[str, Any], name: str, default: int) -> int:
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(f"server.{name}", f"must be a whole number of at least 1, got {value!r}")
            return default
        return value

    def route(self, raw: Any, key: str, auth_tables: dict[str, Any]) -> RouteConfig | None:
        table = self.table(
            raw,
            key,
            (
                "prefix",
                "upstream",
                "auth",
                "timeout",
                "ca_file",
                "rate_limit",
                "retry",
                "request_buffering",
                "rewrite_location",
            ),
        )
        prefix = self.string(table, key, "prefix", required=True)
        upstream_text = self.string(table, key, "upstream", required=True)
        auth = self.string(table, key, "auth")
        timeout = self.timeout(table.get("timeout", {}), f"{key}.timeout")
        ca_file = self.ca_file(table, key, "ca_file")
        rate_limit = self.rate_limit(table.get("rate_limit"), f"{key}.rate_limit")
        retry = self.retry(table.get("retry", {}), f"{key}.retry")
        buffering = self.switch(table, key, "request_buffering", default=True)
        rewrite_location = self.switch(table, key, "rewrite_location", default=True)
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
            request_buffering=buffering,
            rewrite_location=rewrite_location,
        )

    def switch(self, table: dict[str, Any], key: str, name: str, *, default: bool) -> bool:
        value = table.get(name, default)
        if not isinstance(value, bool):
            self.fail(f"{key}.{name}", f"must be true or false, got {value!r}")
            return default
        return value

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
        per = self.positive(table, key, "per", 1.0)
        # The limiter divides by rate / per: 0 (underflow) or inf (overflow) would fail
        # serve at start-up. A normal float keeps it above 0 when workers divide it too.
        if not sys.float_info.min <= rate / per < math.inf:
            self.fail(
                key,
                "rate / per must come to a finite number of requests a second above 0, "
                f"got {rate!r} / {per!r}",
            )
        return RateLimitConfig(
            rate=rate,
            per=per,
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
        except ValueError as exc:
            shown = "" if "@" in value else f" {value!r}"  # it may hold user:password@
            self.fail(key, f"invalid URL{shown}: {exc}")
            return None
        # Checked first, so that every later message may show the URL.
        if parts.username is not None or parts.password is not None:
            self.fail(key, "must not carry user:password@ (configure an auth table instead)")
            return None
        if _has_space_or_control(value):
            # urlsplit silently drops tabs and newlines: check the text as written.
            self.fail(key, f"must not contain white space or control characters: {value!r}")
            return None
        try:
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
        bad_host = _bad_host(parts)
        if bad_host is not None:
            self.fail(
                key, f"host is not a valid host name, IPv4 address or [IPv6] literal: {bad_host!r}"
            )
            return None
        if port == 0:
            self.fail(key, f"port must be from 1 to 65535, got 0: {value!r}")
            return None
        if parts.query or parts.fragment or value.endswith(("?", "#")):
            # What follows '?' or '#' is not shown: it is where API keys would be.
            cut = min(i for i in (value.find("?"), value.find("#")) if i >= 0)
            self.fail(key, f"must not have a query or fragment: {value[: cut + 1] + '...'!r}")
            return None
        path_problem = _path_problem(parts.path)
        if path_problem is not None:
            self.fail(key, f"base path {path_problem}: {parts.path!r}")
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
        # The value itself is never shown: a mistyped URL may hold credentials.
        try:
            parts = urlsplit(value)
        except ValueError:
            self.fail(key, "invalid URL")
            return None
        try:
            port = parts.port
        except ValueError:
            self.fail(key, "invalid URL (bad port?)")
            return None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            found = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
            self.fail(key, f"must be an http:// or https:// URL with a host ({found})")
            return None
        if parts.username is not None or parts.password is not None or parts.query:
            # Credentials belong in their own keys, where they are kept secret.
            self.fail(key, "must not carry user:password@ or a query string")
            return None
        if _has_space_or_control(value):
            self.fail(key, "must not contain white space or control characters")
            return None
        if _bad_host(parts) is not None:
            self.fail(key, "host is not a valid host name, IPv4 address or [IPv6] literal")
            return None
        if port == 0:
            self.fail(key, "port must be from 1 to 65535, got 0")
            return None
        path_problem = _path_problem(parts.path)
        if path_problem is not None:
            self.fail(key, f"path {path_problem}")
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
        params = self.params(table.get("params", {}), f"{key}.params", kind)
        ca_file = self.ca_file(table, key, "ca_file")
        default_lifetime = self.positive(table, key, "default_lifetime", 300.0)
        refresh_at = self.positive(table, key, "refresh_at", 0.8)
        if refresh_at >= 1:
            self.fail(f"{key}.refresh_at", f"must be a fraction below 1, got {refresh_at!r}")
            refresh_at = 0.8
        fetch_retry = self.fetch_retry(table.get("fetch_retry", {}), f"{key}.fetch_retry")
        rate_limit = self.rate_limit(table.get("rate_limit"), f"{key}.rate_limit")
        timeout = self.timeout(table.get("timeout", {}), f"{key}.timeout", _DEFAULT_TOKEN_TIMEOUT)
        if scope is None and kind == "password":
            scope = "openid"  # Keycloak (TRAVIS) refuses password grants without it
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

    def params(self, raw: Any, key: str, kind: str | None) -> dict[str, str]:
        table = self.table(raw, key, tuple(raw) if isinstance(raw, dict) else ())
        if kind == "travelyzer":
            reserved = TRAVELYZER_RESERVED_PARAMS
        elif kind is not None:
            reserved = OAUTH2_RESERVED_PARAMS
        else:
            reserved = frozenset()
        auth_key = key.removesuffix(".params")
        out: dict[str, str] = {}
        for name in table:
            if name in reserved:
                # A params entry must never replace what the scheme sends from its own keys.
                own = _PARAM_KEYS.get(name)
                applies = own is not None and (
                    kind == "password" or own not in ("username", "password")
                )
                hint = f"; configure {auth_key}.{own} instead" if applies else ""
                scheme = "Travelyzer" if kind == "travelyzer" else "OAuth2"
                self.fail(f"{key}.{name}", f"reserved: the {scheme} token request sets it{hint}")
                continue
            # An empty extra field may be what the endpoint wants, so it is sent as given.
            value = self.string(table, key, name, allow_empty=True)
            if value is not None:
                out[name] = value
        return out


def _has_space_or_control(value: str) -> bool:
    return any(c.isspace() or c < " " or "\x7f" <= c <= "\x9f" for c in value)


def _path_problem(path: str) -> str | None:
    """What makes a URL path invalid under RFC 3986 (pchar and '/'), or None."""
    if not _PATH_CHARS.fullmatch(path):
        return "has characters that must be percent-encoded"
    if not _PERCENT_ESCAPES.fullmatch(path):
        return "has a '%' that is not followed by two hex digits"
    return None


def _bad_host(parts: SplitResult) -> str | None:
    """The host as written if it is not a host name, IPv4 address or [IPv6] literal, or None.

    urlsplit is lenient: it keeps a backslash or '%' in a name and drops whatever follows
    the ']' of an IPv6 literal, so the host is taken from the netloc as written.
    """
    hostport = parts.netloc.rpartition("@")[2]
    if hostport.startswith("["):
        literal, _, after = hostport[1:].partition("]")
        try:
            IPv6Address(literal)
        except ValueError:
            return f"[{literal}"
        return None if not after or after.startswith(":") else hostport
    host = hostport.partition(":")[0]
    name = host.removesuffix(".")  # a fully qualified name may end in a dot
    labels = name.split(".")
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return host
    if NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            IPv4Address(name)
        except ValueError:
            return host
    return None
