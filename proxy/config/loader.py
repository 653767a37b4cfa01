"""Loading routes.toml: resolve ${VAR} and ${file:PATH} references, check every key, report
every problem.

Each table's keys and their checks are declared on its dataclass (model.py); this walks the
file, reads each table against its dataclass and checks what spans tables: references
between routes, auth tables and clients (not reported while the table referred to may be
one whose name was misspelt or refused: that one problem says it), duplicate prefixes and
keys. Routes are named by prefix in problems (``routes[/travtus].upstream``).
"""

from __future__ import annotations

import codecs
import os
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, Final

from ..errors import ConfigError
from .checks import Checks, _type_name
from .model import (
    AUTH,
    STATE,
    AuthConfig,
    ClientConfig,
    Config,
    RouteConfig,
    Secret,
    ServerConfig,
    StateConfig,
)
from .settings import build, read, section
from .tls import client_certificate
from .urls import route_prefix

# UTF-32 first: its little-endian mark starts with UTF-16's.
_OTHER_BOMS: Final = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, 'UTF-16 (Notepad\'s "Unicode")'),
    (codecs.BOM_UTF16_BE, 'UTF-16 (Notepad\'s "Unicode")'),
)

# Config fields the loader fills in itself.
_NOT_KEYS: Final = frozenset({"from_files"})


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
    """Like :func:`load`, from TOML text; relative ``ca_file`` and ``${file:PATH}`` paths
    resolve against base_dir.
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
        before = len(self.problems)
        self.table(raw, "", tuple(f.name for f in fields(Config) if f.name not in _NOT_KEYS))
        # A misspelt top-level key may be the table a reference means.
        top_whole = len(self.problems) == before
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
        # A table that failed still answers to its name: its own problems say what is wrong.
        auth_names = _Names(auth_raw, top_whole)
        routes_raw = raw.get("routes", [])
        routes: list[RouteConfig] = []
        if not isinstance(routes_raw, list):
            self.fail(
                "routes", f"must be an array of tables ([[routes]]), got {_type_name(routes_raw)}"
            )
            routes_raw = None
        prefixes = [self.prefix_of(table) for table in routes_raw or ()]
        prefix_names = _Names(
            {p for p in prefixes if p is not None},
            top_whole and routes_raw is not None and None not in prefixes,
        )
        seen: dict[str, int] = {}
        for index, table in enumerate(routes_raw or ()):
            prefix = prefixes[index]
            key = (
                f"routes[{prefix}]"
                if prefix is not None and prefix not in seen
                else f"routes[{index}]"
            )
            route = self.route(table, key, auth_names)
            if route is None:
                if prefix is not None:
                    seen.setdefault(prefix, index)
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
            client = self.client(name, table, prefix_names, auth_names)
            if client is not None:
                clients[name] = client
        keys: dict[Secret, str] = {}
        for name, client in clients.items():
            if client.key in keys:
                self.fail(f"clients.{name}.key", f"same key as clients.{keys[client.key]}")
            keys[client.key] = name
        admin = server.admin_access.client
        if admin is not None and _Names(clients_raw, top_whole).unknown(admin):
            self.fail("server.admin_access", f"no [clients.{admin}]")
        state = STATE(self, raw.get("state", {}), "state", StateConfig())
        return Config(
            server=server,
            routes=tuple(routes),
            auth=auth,
            clients=clients,
            state=state,
            from_files=tuple(Secret(value) for value in self.from_files),
        )

    def client(
        self, name: str, raw: Any, prefixes: _Names, auth_tables: _Names
    ) -> ClientConfig | None:
        key = f"clients.{name}"
        values = read(self, ClientConfig, raw, key)
        routes: tuple[str, ...] | None = values["routes"]
        if routes is not None:
            unknown = [p for p in routes if prefixes.unknown(p)]
            if unknown:
                self.fail(f"{key}.routes", f"no such route prefix: {', '.join(unknown)}")
        overrides: dict[str, str] = {}
        for prefix, value in values["auth"].items():
            path = f"{key}.auth.{prefix!r}"
            if prefixes.unknown(prefix):
                self.fail(path, "no such route prefix")
            elif not isinstance(value, str) or auth_tables.unknown(value):
                self.fail(path, f"no [auth.{value}] table")
            else:
                overrides[prefix] = value
        values["auth"] = overrides
        return build(ClientConfig, values, name=name)

    def prefix_of(self, raw: Any) -> str | None:
        """A route table's prefix when it is a good one, problems left for its check; how
        problems name the route (``routes[/travtus]`` says more than its place)."""
        prefix = raw.get("prefix") if isinstance(raw, dict) else None
        if not isinstance(prefix, str):
            return None
        resolved = self.references.substitute(prefix)[0]
        try:
            return None if resolved is None else route_prefix(resolved)
        except ValueError:
            return None

    def route(self, raw: Any, key: str, auth_tables: _Names) -> RouteConfig | None:
        values = read(self, RouteConfig, raw, key)
        client_certificate(self, key, values)
        auth = values["auth"]
        if auth is not None and auth_tables.unknown(auth):
            known = ", ".join(sorted(auth_tables.names)) or "none defined"
            self.fail(f"{key}.auth", f"no [auth.{auth}] table (defined: {known})")
        return build(RouteConfig, values)

    def auth(self, name: str, raw: Any) -> AuthConfig | None:
        """The [auth.NAME] table, when every key is good."""
        scheme, values = AUTH.read(self, raw, f"auth.{name}")
        if scheme is None:
            return None
        client_certificate(self, f"auth.{name}", values)
        built: AuthConfig | None = build(scheme, values, name=name)
        return built


class _Names:
    """What a reference between tables may name, and whether that is all of them: when a
    table (or the key holding them) was misspelt or its name refused, a reference to it
    would only repeat that problem, so it is not reported."""

    __slots__ = ("names", "whole")

    def __init__(self, names: Collection[str] | Any, whole: bool) -> None:
        self.names = set(names) if isinstance(names, dict | set) else set()
        self.whole = whole and isinstance(names, dict | set)

    def unknown(self, name: str) -> bool:
        return self.whole and name not in self.names
