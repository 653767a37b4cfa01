"""Route table: the raw request target -> (route, upstream path and query).

The decision is made on exactly the bytes that are sent upstream: the raw target is never
decoded and re-encoded, only split. Anything that could climb out of a route's base path
(dot segments, raw or percent-encoded, also behind %2F or a backslash) is refused first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote

from .config import RouteConfig
from .errors import BadRequestError, MisdirectedError, NoRouteError
from .http.authority import split_authority

RESERVED_PREFIX: Final = "/-/"

# A segment is suspect when it contains a dot, raw, as %2e or behind a %25 that a
# double-decoding upstream would unwrap; only suspect segments get decoded.
_MAYBE_DOT: Final = re.compile(r"\.|%2e|%25", re.IGNORECASE)
# After decoding, these separate path pieces for some upstream server or other.
_PIECE_SEPARATORS: Final = re.compile(r"[/\\]")


class RouteTable:
    """Longest-prefix match on whole path segments; built once at start-up."""

    __slots__ = ("_by_prefix", "_catch_all", "_hosts")

    def __init__(self, routes: Iterable[RouteConfig], hosts: Iterable[str] = ()) -> None:
        self._by_prefix = {r.prefix: r for r in routes if r.prefix != "/"}
        self._catch_all = next((r for r in routes if r.prefix == "/"), None)
        # server.hosts, as (name, port) pairs; empty: any Host, and no absolute-form.
        self._hosts = frozenset(split_authority(host) for host in hosts)

    def resolve(self, raw_target: str, host: str | None = None) -> tuple[RouteConfig, str]:
        """Return the route and the upstream request target: base path + rest of the path,
        then the query exactly as received (a bare trailing ``?`` included).

        Raises BadRequestError for targets that are not origin-form or hold dot segments,
        MisdirectedError for a Host that server.hosts does not list, NoRouteError when no
        prefix matches.
        """
        if self._hosts:
            raw_target = self._check_host(raw_target, host)
        if not raw_target.startswith("/") or raw_target.startswith("//"):
            # Absolute-form (http://host/...), authority-form and "*" never reach an upstream.
            raise BadRequestError("request target must be a path starting with a single '/'")
        if "#" in raw_target:
            raise BadRequestError("request target must not carry a #fragment")
        path, mark, query = raw_target.partition("?")
        if has_dot_segment(path):
            raise BadRequestError("path must not contain '.' or '..' segments")
        if path.startswith(RESERVED_PREFIX):
            raise NoRouteError("no such endpoint of the proxy")
        route = self._match(path)
        rest = path[len(route.prefix) :] if route.prefix != "/" else path
        upstream_path = route.upstream.base_path + rest
        if upstream_path.startswith("//"):
            # /prefix//evil.example/x on an upstream without base path would be a
            # network-path reference to whatever parses it as a URL.
            raise BadRequestError("path must not start with '//' once the prefix is removed")
        return route, (upstream_path or "/") + mark + query

    def _check_host(self, raw_target: str, host: str | None) -> str:
        """Refuse a Host we do not serve (a DNS-rebinding page, a misrouted client); accept
        an absolute-form target naming one we do, if its Host says the same, as the
        origin-form path it carries (RFC 9112 3.2.2)."""
        served = self._named(host) if host is not None else None
        if served is None:
            raise MisdirectedError("this proxy does not serve that Host")
        scheme, sep, rest = raw_target.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or "/" in scheme:
            return raw_target  # origin-form (or refused as a bad target below)
        # The authority ends at the path, or straight at a query (RFC 3986 3.2).
        end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        if self._named(rest[:end]) != served:
            raise BadRequestError("the request target and Host name different hosts")
        tail = rest[end:]
        return tail if tail.startswith("/") else "/" + tail

    def _named(self, authority: str) -> tuple[str, int] | None:
        """The listed (name, port) an authority matches, if any (no port: 80)."""
        try:
            name, given = split_authority(authority)
        except ValueError:
            return None
        port = 80 if given is None else given
        if (name, port) in self._hosts or (name, None) in self._hosts:
            return name, port
        return None

    def _match(self, path: str) -> RouteConfig:
        candidate = path
        while candidate:
            route = self._by_prefix.get(candidate)
            if route is not None:
                return route
            candidate = candidate[: candidate.rfind("/")]
        if self._catch_all is not None:
            return self._catch_all
        # The path is not echoed: no error repeats a word of the request.
        raise NoRouteError("no route for this path")


def has_dot_segment(path: str) -> bool:
    if not _MAYBE_DOT.search(path):
        return False
    for segment in path.split("/"):
        if not _MAYBE_DOT.search(segment):
            continue
        decoded = segment
        for _ in range(3):  # some servers decode twice: %252e%252e must not pass either
            for piece in _PIECE_SEPARATORS.split(decoded):
                # "..;jsessionid" is ".." to Tomcat-style servers: path parameters hide nothing.
                if piece.split(";", 1)[0] in (".", ".."):
                    return True
            once_more = unquote(decoded)
            if once_more == decoded:
                break
            decoded = once_more
    return False
