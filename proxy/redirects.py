"""Location and Content-Location as the client must see them, as nginx's
``proxy_redirect default`` rewrites them.

An upstream names its own URLs. Passed on as they are, an absolute one sends the client
straight to the vendor (without the proxy, and without its token) and a path falls outside
the route's prefix (the client that follows it gets 404 no_route). So a URL on the route's
upstream, under its base path, becomes the proxy's URL under the route's prefix; a path
under the base path gets the prefix back; anything else (another host, a relative
reference, a path outside the base path) passes untouched. Only the part before the path
changes: the rest goes back byte for byte.
"""

from __future__ import annotations

from typing import Final

from multidict import CIMultiDict, istr
from yarl import URL

from .config import RouteConfig

REWRITTEN: Final = (istr("Location"), istr("Content-Location"))


class Redirects:
    """The rewriting rule of one route, decided once at start-up."""

    __slots__ = ("_base", "_origin", "_prefix")

    def __init__(self, route: RouteConfig) -> None:
        upstream = route.upstream
        self._origin = (upstream.scheme, upstream.host.strip("[]").lower(), upstream.port)
        self._base = upstream.base_path
        # The catch-all route "/" puts the upstream path under nothing.
        self._prefix = "" if route.prefix == "/" else route.prefix

    def rewrite(self, headers: CIMultiDict[str], scheme: str, host: str | None) -> None:
        """Rewrite the answer's Location and Content-Location in place; ``scheme`` and
        ``host`` (the request's Host) name the proxy as the client reached it."""
        for name in REWRITTEN:
            value = headers.get(name)
            if value is not None:
                rewritten = self._one(value.strip(), scheme, host)
                if rewritten is not None:
                    headers[name] = rewritten

    def _one(self, value: str, scheme: str, host: str | None) -> str | None:
        if value.startswith("/") and not value.startswith("//"):
            tail = self._under_base(value)
            return None if tail is None else (self._prefix + tail or "/")
        if "://" not in value:
            return None  # relative to the client's own URL: right as it is
        try:
            url = URL(value, encoded=True)
        except ValueError:
            return None
        if url.user is not None or url.host is None:
            return None
        if (url.scheme, url.host.lower(), url.port) != self._origin:
            return None  # another host: not ours to hide
        after = value.partition("://")[2]
        cut = min((i for i in map(after.find, "/?#") if i >= 0), default=len(after))
        rest = after[cut:]
        if not rest.startswith("/"):
            rest = "/" + rest  # "https://host?x" is the root with a query
        tail = self._under_base(rest)
        if tail is None:
            return None
        local = self._prefix + tail
        if not local.startswith("/"):
            local = "/" + local  # the catch-all route, and a base path followed by "?"
        return local if host is None else f"{scheme}://{host}{local}"

    def _under_base(self, target: str) -> str | None:
        """The part of an upstream target below the base path (whole segments), or None."""
        base = self._base
        if not base:
            return target
        if target == base or target.startswith((base + "/", base + "?", base + "#")):
            return target[len(base) :]
        return None
