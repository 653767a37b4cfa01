"""Loading routes.toml: resolve ${VAR} references, check every key, report every problem.

Each table's keys and their checks are declared on its dataclass (model.py); this walks the
file, reads each table against its dataclass and checks what spans tables: references
between routes, auth tables and clients, duplicate prefixes and keys.
"""

from __future__ import annotations

import codecs
import os
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Final

from ..errors import ConfigError
from .checks import Checks, _type_name
from .model import (
    AUTH_SCHEMES,
    AUTH_TYPES,
    CLIENT_AUTH_MODES,
    DEFAULT_PASSWORD_SCOPE,
    OAUTH2_RESERVED_PARAMS,
    RATE_LIMIT,
    TRAVELYZER_EXPIRES_IN,
    TRAVELYZER_RESERVED_PARAMS,
    AuthCommon,
    AuthConfig,
    ClientConfig,
    ClientCredentialsAuth,
    Config,
    FetchRetry,
    PasswordAuth,
    RateConfig,
    RateLimitConfig,
    RouteConfig,
    Secret,
    ServerConfig,
    StateConfig,
    Timeout,
    TravelyzerAuth,
)
from .settings import build, read, section
from .urls import token_url_problem

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

_DEFAULT_TOKEN_TIMEOUT: Final = Timeout(connect=10.0, read=30.0)
_DEFAULT_FETCH_RETRY: Final = FetchRetry()
# An [auth.NAME] table's keys come from the scheme dataclasses: a new field is a new key.
_SHARED_KEYS: Final = tuple(f.name for f in fields(AuthCommon))
_APPLIES: Final = {kind: tuple(f.name for f in fields(cls)) for kind, cls in AUTH_SCHEMES.items()}
_REQUIRED: Final = {
    kind: frozenset(
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    )
    for kind, cls in AUTH_SCHEMES.items()
}
_OWN_KEYS: Final = tuple(
    dict.fromkeys(n for names in _APPLIES.values() for n in names if n not in _SHARED_KEYS)
)
# As the README lists them: what the table is and where it asks, the schemes' keys, the rest.
_AUTH_KEYS: Final = (
    "type",
    "token_url",
    *_OWN_KEYS,
    *(n for n in _SHARED_KEYS if n not in ("name", "token_url")),
)
# Keys that do not apply to a table's type are named one scheme's keys first.
_SCHEME_KEYS: Final = tuple(
    sorted(_OWN_KEYS, key=lambda n: sum(n in names for names in _APPLIES.values()))
)
_MISSING_SECRET: Final = Secret("")


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
        self.table(raw, "", tuple(f.name for f in fields(Config)))
        # [server] is read as a table-valued key would be, with every default as its default.
        server = section(ServerConfig)(self, raw.get("server", {}), "server", ServerConfig())
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
        state = section(StateConfig)(self, raw.get("state", {}), "state", StateConfig())
        return Config(server=server, routes=tuple(routes), auth=auth, clients=clients, state=state)

    def client(
        self, name: str, raw: Any, prefixes: set[str], auth: Mapping[str, AuthConfig]
    ) -> ClientConfig | None:
        key = f"clients.{name}"
        values = read(self, ClientConfig, raw, key)
        routes: tuple[str, ...] | None = values["routes"]
        if routes is not None:
            unknown = [p for p in routes if p not in prefixes]
            if unknown:
                self.fail(f"{key}.routes", f"no such route prefix: {', '.join(unknown)}")
        overrides: dict[str, str] = {}
        for prefix, value in values["auth"].items():
            path = f"{key}.auth.{prefix!r}"
            if prefix not in prefixes:
                self.fail(path, "no such route prefix")
            elif not isinstance(value, str) or value not in auth:
                self.fail(path, f"no [auth.{value}] table")
            else:
                overrides[prefix] = value
        values["auth"] = overrides
        return build(ClientConfig, values, name=name)

    def route(self, raw: Any, key: str, auth_tables: dict[str, Any]) -> RouteConfig | None:
        values = read(self, RouteConfig, raw, key)
        auth = values["auth"]
        if auth is not None and auth not in auth_tables:
            known = ", ".join(sorted(auth_tables)) or "none defined"
            self.fail(f"{key}.auth", f"no [auth.{auth}] table (defined: {known})")
        return build(RouteConfig, values)

    def rate_limit(self, raw: Any, key: str) -> RateLimitConfig | None:
        """An auth table's rate_limit (routes and clients declare theirs as fields)."""
        return None if raw is None else RATE_LIMIT(self, raw, key, None)

    def token_url(self, value: str, key: str) -> str | None:
        # The value itself is never shown: a mistyped URL may hold credentials.
        problem = token_url_problem(value)
        if problem is not None:
            self.fail(key, problem)
            return None
        return value

    def timeout(self, raw: Any, key: str, default: Timeout) -> Timeout:
        """An auth table's timeout (routes declare theirs as a field)."""
        return section(Timeout)(self, raw, key, default)

    def auth(self, name: str, raw: Any) -> AuthConfig | None:
        key = f"auth.{name}"
        table = self.table(raw, key, _AUTH_KEYS)
        kind = self.choice(table, key, "type", AUTH_TYPES, None)
        needs = _REQUIRED.get(kind or "", frozenset())
        token_url = self.string(table, key, "token_url", required=True)
        if token_url is not None:
            token_url = self.token_url(token_url, f"{key}.token_url")
        client_id = self.string(table, key, "client_id", required="client_id" in needs)
        # Keycloak public clients have no secret; Cognito app clients always do.
        client_secret = self.secret(table, key, "client_secret", required="client_secret" in needs)
        client_auth = self.choice(table, key, "client_auth", CLIENT_AUTH_MODES, "post")
        scope = self.string(table, key, "scope")
        username = self.string(table, key, "username", required="username" in needs)
        password = self.secret(table, key, "password", required="password" in needs)
        api_key = self.secret(table, key, "api_key", required="api_key" in needs)
        api_secret = self.secret(table, key, "api_secret", required="api_secret" in needs)
        expires_in = self.choice(table, key, "expires_in", TRAVELYZER_EXPIRES_IN, "24h")
        token_rate = (
            section(RateConfig)(self, table["token_rate"], f"{key}.token_rate", None)
            if "token_rate" in table
            else None
        )
        params = self.params(table.get("params", {}), f"{key}.params", kind)
        ca_file = self.ca_file(table, key, "ca_file")
        default_lifetime = self.positive(table, key, "default_lifetime", 300.0)
        refresh_at = self.positive(table, key, "refresh_at", 0.8)
        if refresh_at >= 1:
            self.fail(f"{key}.refresh_at", f"must be a fraction below 1, got {refresh_at!r}")
            refresh_at = 0.8
        fetch_retry = section(FetchRetry)(
            self, table.get("fetch_retry", {}), f"{key}.fetch_retry", _DEFAULT_FETCH_RETRY
        )
        rate_limit = self.rate_limit(table.get("rate_limit"), f"{key}.rate_limit")
        timeout = self.timeout(table.get("timeout", {}), f"{key}.timeout", _DEFAULT_TOKEN_TIMEOUT)
        if kind is None or token_url is None:
            return None
        applies = _APPLIES[kind]
        for field_name in _SCHEME_KEYS:
            if field_name in table and field_name not in applies:
                self.fail(f"{key}.{field_name}", f"does not apply to type = {kind!r}")
        common: dict[str, Any] = {
            "name": name,
            "token_url": token_url,
            "token_rate": token_rate,
            "params": params,
            "ca_file": ca_file,
            "default_lifetime": default_lifetime,
            "refresh_at": refresh_at,
            "fetch_retry": fetch_retry,
            "rate_limit": rate_limit,
            "timeout": timeout,
        }
        # A required value that is missing was reported above; a placeholder keeps the table
        # known, so that clients naming it are checked as usual. A config with problems is
        # never returned.
        if kind == "travelyzer":
            return TravelyzerAuth(
                **common,
                api_key=api_key or _MISSING_SECRET,
                api_secret=api_secret or _MISSING_SECRET,
                expires_in=expires_in or "24h",
            )
        if kind == "password":
            return PasswordAuth(
                **common,
                client_id=client_id or "",
                client_secret=client_secret,
                client_auth=client_auth or "post",
                scope=scope or DEFAULT_PASSWORD_SCOPE,
                username=username or "",
                password=password or _MISSING_SECRET,
            )
        return ClientCredentialsAuth(
            **common,
            client_id=client_id or "",
            client_secret=client_secret or _MISSING_SECRET,
            client_auth=client_auth or "post",
            scope=scope,
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
