"""Which headers cross the proxy, in each direction.

Hop-by-hop headers describe one connection, not the message (RFC 9110 7.6.1), so they are
dropped both ways together with every header a Connection field names. Sets are built once.
"""

from __future__ import annotations

import os
import re
import time
from email.utils import parsedate_to_datetime
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy, istr

# Lower-case names, compared with name.lower(): an istr in a frozenset does NOT match
# case-insensitively, and names arrive in whatever case the client or upstream wrote.
HOP_BY_HOP: Final[frozenset[str]] = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authorization",
        "Proxy-Authenticate",
        "HTTP2-Settings",  # only meaningful with Upgrade: h2c, which is never forwarded
    )
)

# Besides hop-by-hop: Host is the upstream's (it must match SNI); Expect was already
# answered by our server; forwarding headers are ours to set, never the client's; and the
# body's framing (Content-Length or chunked) is written by the upstream client from the
# body it actually sends, never copied.
_REQUEST_DROP: Final[frozenset[str]] = HOP_BY_HOP | {
    h.lower()
    for h in (
        "Host",
        "Content-Length",
        "Expect",
        "Forwarded",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
    )
}
_REQUEST_DROP_WITH_AUTH: Final = _REQUEST_DROP | {"authorization"}

X_REQUEST_ID: Final = istr("X-Request-ID")
_REQUEST_ID_OK: Final = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")


def _connection_listed(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> frozenset[str]:
    return frozenset(
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
        if token.strip()
    )


# Names a client could spell with "_" or "." so that a server normalising them (CGI,
# some frameworks) reads them as these: such aliases are dropped, never forwarded.
_ALIAS_GUARDED: Final = frozenset(
    {
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-real-ip",
        "forwarded",
        "authorization",
        "host",
        "content-length",
        "transfer-encoding",
        "x-request-id",
        "via",
    }
)
VIA: Final = istr("Via")
MAX_FORWARDS: Final = istr("Max-Forwards")


class HeaderPolicy:
    """The request-side header rules of one config: hop-by-hop and framing headers out,
    forwarding headers ours (extended only for trusted proxies), Via added, loops refused,
    the client key header never forwarded (the key opens the proxy, not the vendor)."""

    __slots__ = ("_drop", "_drop_with_auth", "_trusted", "via_entry", "via_name")

    def __init__(
        self,
        client_key_header: str | None = None,
        *,
        via: str | None = "authproxy",
        trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = (),
    ) -> None:
        extra = frozenset({client_key_header.lower()}) if client_key_header else frozenset()
        # With a Via of ours, the client's is rebuilt with ours appended; without, it
        # passes as sent (and loops cannot be told).
        ours = frozenset({"via"}) if via is not None else frozenset()
        self._drop = _REQUEST_DROP | extra | ours
        self._drop_with_auth = _REQUEST_DROP_WITH_AUTH | extra | ours
        self._trusted = trusted_proxies
        self.via_name = via.lower() if via is not None else None
        self.via_entry = f"1.1 {via}" if via is not None else None

    def is_loop(self, headers: CIMultiDictProxy[str]) -> bool:
        """Does the request already carry our own Via entry (it came back to us)?"""
        if self.via_name is None:
            return False
        for value in headers.getall(VIA, ()):
            for entry in value.split(","):
                parts = entry.split()
                if len(parts) >= 2 and parts[1].lower() == self.via_name:
                    return True
        return False

    def _trusts(self, peer: str | None) -> bool:
        if not self._trusted or peer is None:
            return False
        try:
            address = ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self._trusted)

    def upstream_request(
        self,
        headers: CIMultiDictProxy[str],
        *,
        strip_authorization: bool,
        peer: str | None,
        host: str | None,
        scheme: str,
        request_id: str,
        method: str = "GET",
    ) -> CIMultiDict[str]:
        """The client's headers as the upstream should see them (order and repeats kept)."""
        drop = self._drop_with_auth if strip_authorization else self._drop
        if "Connection" in headers:
            # Names listed in Connection go too; ours are set afterwards, so a client
            # cannot list Authorization or X-Forwarded-For there to remove them.
            drop = drop | _connection_listed(headers)
        trusted = self._trusts(peer)
        out: CIMultiDict[str] = CIMultiDict()
        for name, value in headers.items():
            lowered = name.lower()
            if lowered in drop or _alias(lowered) or (not trusted and _forwarding(lowered)):
                continue
            out.add(name, value)
        if trusted:
            # Behind a proxy we trust, its forwarding headers describe the real client:
            # extend them (RFC 7239 and the X-Forwarded-For convention) instead of
            # replacing them.
            chain = ", ".join(headers.getall("X-Forwarded-For", ()))
            out["X-Forwarded-For"] = f"{chain}, {peer}" if chain else (peer or "")
            out["X-Forwarded-Proto"] = headers.get("X-Forwarded-Proto", scheme)
            if host or "X-Forwarded-Host" in headers:
                out["X-Forwarded-Host"] = headers.get("X-Forwarded-Host", host or "")
            forwarded = ", ".join(headers.getall("Forwarded", ()))
            if forwarded:
                out["Forwarded"] = f"{forwarded}, for={_forwarded_node(peer)}"
        else:
            if peer:
                out["X-Forwarded-For"] = peer
            out["X-Forwarded-Proto"] = scheme
            if host:
                out["X-Forwarded-Host"] = host
        out[X_REQUEST_ID] = request_id
        if self.via_entry is not None:
            via = ", ".join(headers.getall(VIA, ()))
            out[VIA] = f"{via}, {self.via_entry}" if via else self.via_entry
        if method == "OPTIONS" and MAX_FORWARDS in out:
            out[MAX_FORWARDS] = str(int(out[MAX_FORWARDS]) - 1)  # checked by max_forwards()
        return out


def _forwarding(lowered: str) -> bool:
    # Any X-Forwarded-* (Port, Prefix, Server, Ssl, ...) or X-Real-IP from an untrusted
    # client is a claim about the connection that only a proxy may make.
    return lowered.startswith("x-forwarded-") or lowered == "x-real-ip"


def _alias(lowered: str) -> bool:
    if "_" not in lowered and "." not in lowered:
        return False
    return lowered.replace("_", "-").replace(".", "-") in _ALIAS_GUARDED


def _forwarded_node(peer: str | None) -> str:
    if peer is None:
        return "unknown"
    return f'"[{peer}]"' if ":" in peer else peer


def max_forwards(headers: CIMultiDictProxy[str]) -> int | None:
    """The Max-Forwards value (RFC 9110 7.6.2), None when absent; ValueError when it is not
    one whole number."""
    values = headers.getall(MAX_FORWARDS, ())
    if not values:
        return None
    value = values[0].strip()
    # ASCII digits only: str.isdigit() takes superscripts (int() refuses them) and
    # Arabic-Indic digits (int() reads them), neither of which RFC 9110's 1*DIGIT allows.
    if len(values) > 1 or not (value.isascii() and value.isdigit()):
        raise ValueError("Max-Forwards must be one non-negative integer")
    return int(value)


def client_response_headers(
    headers: CIMultiDict[str] | CIMultiDictProxy[str], via_entry: str | None = None
) -> CIMultiDict[str]:
    """The upstream's response headers as the client should see them (with our Via entry
    appended, as a proxy must in each message it forwards)."""
    drop: frozenset[str] = HOP_BY_HOP
    if "Connection" in headers:
        drop = HOP_BY_HOP | _connection_listed(headers)
    out = CIMultiDict((name, value) for name, value in headers.items() if name.lower() not in drop)
    if via_entry is not None:
        via = ", ".join(out.popall(VIA, ()))
        out[VIA] = f"{via}, {via_entry}" if via else via_entry
    return out


class RequestIds:
    """Request ids: the client's X-Request-ID when it is a sane token, else 128 fresh
    random bits.

    A client's id is kept so its own logs and ours line up; anything odd (too long, spaces,
    control bytes) is replaced rather than copied into our logs and the upstream request.
    Randomness is drawn 4 KiB at a time: one getrandom call per 256 ids, not one per
    request (a system call costs more than the rest of this together).
    """

    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def for_request(self, headers: CIMultiDictProxy[str]) -> str:
        given = headers.get(X_REQUEST_ID)
        if given is not None and _REQUEST_ID_OK.fullmatch(given):
            return given
        return self.new()

    def new(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool = os.urandom(4096)
            at = 0
        self._at = at + 16
        return self._pool[at : at + 16].hex()


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date), None if absent
    or unreadable. A date in the past means 0."""
    if value is None:
        return None
    value = value.strip()
    if not value.isascii():
        return None  # str.isdigit() takes "²", which float() refuses
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
