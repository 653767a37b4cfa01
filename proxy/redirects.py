"""Location and Content-Location as the client must see them, as nginx's
``proxy_redirect default`` rewrites them.

An upstream names its own URLs. Passed on as they are, an absolute one sends the client
straight to the vendor (without the proxy, and without its token) and a path falls outside
the route's prefix (the client that follows it gets 404 no_route). So a URL on the route's
upstream, under its base path, and a path under the base path become a path on the proxy
under the route's prefix; anything else (another host, a relative reference, a path
outside the base path) passes untouched. The result is an absolute-path reference
(RFC 9110 10.2.2), which the client resolves against the URL it used itself: its scheme
and host stay right behind a TLS terminator or a load balancer, which the proxy could
only guess. Only the part before the path changes: the rest goes back byte for byte.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Final

from multidict import CIMultiDict, istr
from yarl import URL

from .config import RouteConfig
from .routing import has_dot_segment

REWRITTEN: Final = (istr("Location"), istr("Content-Location"))


class Redirects:
    """The rewriting rule of one route, decided once at start-up."""

    __slots__ = ("_base", "_origin", "_prefix")

    def __init__(self, route: RouteConfig) -> None:
        upstream = route.upstream
        self._origin = (upstream.scheme, _host_key(upstream.host), upstream.port)
        self._base = upstream.base_path
        # The catch-all route "/" puts the upstream path under nothing.
        self._prefix = "" if route.prefix == "/" else route.prefix

    def rewrite(self, headers: CIMultiDict[str]) -> None:
        """Rewrite the answer's Location and Content-Location in place (every value, if
        an upstream sent several)."""
        for name in REWRITTEN:
            if name in headers:
                values = headers.popall(name)
                for value in values:
                    headers.add(name, self.one(value) or value)

    def one(self, value: str) -> str | None:
        """The rewritten value, or None to pass it untouched."""
        if value.startswith("/") and not value.startswith("//"):
            return self._local(value)
        if "://" not in value:
            return None  # relative to the client's own URL: right as it is
        try:
            url = URL(value, encoded=True)
            origin = (url.scheme, _host_key(url.host or ""), url.port)
            foreign = url.user is not None or url.password is not None
        except (ValueError, TypeError):  # a port out of range, a bad IDNA label, ...
            return None
        if foreign or origin != self._origin:
            return None  # another host, or credentials in the URL: not ours to hide
        # The rest is cut from the text as sent, not rebuilt from yarl's parts: those drop
        # an empty "?" or "#" and delete tabs and newlines.
        after = value.partition("://")[2]
        cut = min((i for i in map(after.find, "/?#") if i >= 0), default=len(after))
        rest = after[cut:]
        return self._local(rest if rest.startswith("/") else "/" + rest)

    def _local(self, target: str) -> str | None:
        """The proxy's path for an upstream target under the base path, else None."""
        base = self._base
        if base:
            if not (target == base or target.startswith((base + "/", base + "?", base + "#"))):
                return None
            target = target[len(base) :]
        local = self._prefix + target
        if not local.startswith("/"):
            local = "/" + local  # the catch-all route, or the base path then "?" or "#"
        path = local.partition("?")[0].partition("#")[0]
        if local.startswith("//") or has_dot_segment(path):
            # A network-path reference would send the client to another host; a dot
            # segment, once the client resolves it, to another route.
            return None
        return local


def _host_key(host: str) -> str:
    """A host as compared: case folded, an IP address in one spelling (::1 and
    0:0:0:0:0:0:0:1 are one host)."""
    bare = host.strip("[]")
    try:
        return ip_address(bare).compressed
    except ValueError:
        return bare.lower()
