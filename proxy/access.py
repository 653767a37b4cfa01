"""Who may use the proxy: the source allowlist, client keys, and the routes a key opens.

A proxy that injects credentials is an open door if anyone can reach it. Checks run in this
order, each before anything else happens: source address (403), key (401), route (403).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address

from multidict import CIMultiDictProxy

from .auth.base import TokenProvider
from .config import ServerConfig
from .errors import ForbiddenError, UnauthorizedError
from .limits import Limit

# What a request spends on its way upstream: whose token it carries (None: the route injects
# none) and every limit it takes a slot from.
Terms = tuple[TokenProvider | None, tuple[Limit, ...]]


class Caller:
    """A known client of the proxy: what it may reach, its own limit, and per route the
    terms its requests go upstream on (decided once, by the runtime: the route's own limit,
    its own auth table's token and limit where it brings one, and its own limit)."""

    __slots__ = ("limits", "name", "routes", "terms")

    def __init__(
        self,
        name: str,
        routes: frozenset[str] | None,
        limit: Limit | None,
        terms: Mapping[str, Terms],
    ) -> None:
        self.name = name
        self.routes = routes
        self.limits: tuple[Limit, ...] = () if limit is None else (limit,)
        self.terms = terms  # by route prefix, every route


def _address(remote: str | None) -> IPv4Address | IPv6Address | None:
    if remote is None:
        return None
    try:
        return ip_address(remote)
    except ValueError:
        return None


def is_loopback(host: str | None) -> bool:
    """Is ``host`` an address of this machine only? All of 127.0.0.0/8 and ::1 are, and
    ::ffff:127.x as a dual-stack socket reports them; a host name is not an address."""
    address = _address(host)
    if address is None:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def _digest(key: str) -> bytes:
    # Header values hold any byte the client sent (decoded with surrogateescape): a key
    # that is not UTF-8 is just a wrong key.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class Access:
    """The access rules of one config, decided at start-up."""

    __slots__ = ("_admin", "_allow", "_challenge", "_clients", "header", "required")

    def __init__(self, server: ServerConfig, clients: Mapping[str, tuple[str, Caller]]) -> None:
        self._allow = server.allow
        self.header = server.client_key_header
        # Keys are kept as SHA-256 digests and every one is compared in constant time:
        # neither the time taken nor a lookup tells a caller how much of a key was right.
        self._clients = tuple((_digest(key), client) for key, client in clients.values())
        self.required = bool(clients)
        # RFC 9110 11.6.1: a 401 names how to authenticate. The key is no standard
        # scheme; "Key" is what Kong's key-auth answers, and the header param says where.
        self._challenge = {"WWW-Authenticate": f'Key realm="proxy", header="{self.header}"'}
        self._admin = server.admin_access

    def peer_allowed(self, remote: str | None) -> bool:
        if not self._allow:
            return True
        address = _address(remote)
        return address is not None and any(address in network for network in self._allow)

    def identify(self, headers: CIMultiDictProxy[str]) -> Caller | None:
        """The client whose key the request carries; None when no clients are configured."""
        if not self.required:
            return None
        keys = headers.getall(self.header, ())
        if len(keys) != 1:
            raise UnauthorizedError(
                f"send exactly one {self.header} header with your key", headers=self._challenge
            )
        digest = _digest(keys[0])
        found = None
        for known, client in self._clients:  # every key compared, whichever matches
            if hmac.compare_digest(known, digest):
                found = client
        if found is None:
            raise UnauthorizedError(f"the {self.header} key is not valid", headers=self._challenge)
        return found

    @staticmethod
    def check_route(client: Caller | None, prefix: str) -> None:
        if client is not None and client.routes is not None and prefix not in client.routes:
            raise ForbiddenError(f"client {client.name!r} may not use {prefix}")

    def admin_allowed(self, remote: str | None, headers: CIMultiDictProxy[str]) -> bool:
        """May this caller read /-/metrics and /-/status?"""
        if self._admin.scope == "any":
            return True
        if self._admin.scope == "loopback":
            return is_loopback(remote)
        try:
            client = self.identify(headers)
        except UnauthorizedError:
            return False
        return client is not None and client.name == self._admin.client
