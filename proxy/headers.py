"""Which headers cross the proxy, in each direction.

Hop-by-hop headers describe one connection, not the message (RFC 9110 7.6.1), so they are
dropped both ways together with every header a Connection field names. Sets are built once.
"""

from __future__ import annotations

import os
import re
import time
from email.utils import parsedate_to_datetime
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy, istr

# Lower-case names, compared with name.lower(): an istr in a frozenset does NOT match
# case-insensitively, and only aiohttp's C parser canonicalises the case of known names.
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


class HeaderPolicy:
    """The request-side header rules of one config (its client key header is never
    forwarded: the key opens the proxy, not the vendor)."""

    __slots__ = ("_drop", "_drop_with_auth")

    def __init__(self, client_key_header: str | None = None) -> None:
        extra = frozenset({client_key_header.lower()}) if client_key_header else frozenset()
        self._drop = _REQUEST_DROP | extra
        self._drop_with_auth = _REQUEST_DROP_WITH_AUTH | extra

    def upstream_request(
        self,
        headers: CIMultiDictProxy[str],
        *,
        strip_authorization: bool,
        peer: str | None,
        host: str | None,
        scheme: str,
        request_id: str,
    ) -> CIMultiDict[str]:
        """The client's headers as the upstream should see them (order and repeats kept)."""
        drop = self._drop_with_auth if strip_authorization else self._drop
        if "Connection" in headers:
            # Names listed in Connection go too, except ones we set ourselves afterwards.
            drop = drop | _connection_listed(headers)
        out: CIMultiDict[str] = CIMultiDict(
            (name, value) for name, value in headers.items() if name.lower() not in drop
        )
        if peer:
            out["X-Forwarded-For"] = peer
        out["X-Forwarded-Proto"] = scheme
        if host:
            out["X-Forwarded-Host"] = host
        out[X_REQUEST_ID] = request_id
        return out


def client_response_headers(
    headers: CIMultiDict[str] | CIMultiDictProxy[str],
) -> CIMultiDict[str]:
    """The upstream's response headers as the client should see them."""
    drop: frozenset[str] = HOP_BY_HOP
    if "Connection" in headers:
        drop = HOP_BY_HOP | _connection_listed(headers)
    return CIMultiDict((name, value) for name, value in headers.items() if name.lower() not in drop)


def request_id_from(headers: CIMultiDictProxy[str] | None) -> str:
    """The client's X-Request-ID when it is a sane token, else a new random one.

    A client's id is kept so its own logs and ours line up; anything odd (too long, spaces,
    control bytes) is replaced rather than copied into our logs and the upstream request.
    """
    given = headers.get(X_REQUEST_ID) if headers is not None else None
    if given is not None and _REQUEST_ID_OK.fullmatch(given):
        return given
    return os.urandom(16).hex()  # as unique as a uuid4, at a third of its cost


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date), None if absent
    or unreadable. A date in the past means 0."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
