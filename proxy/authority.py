"""Host names as the Host header and absolute-form targets spell them (RFC 9110 4.2.3).

Kept apart from routing so the config loader can check ``server.hosts`` with the very
same rules the proxy applies to requests.
"""

from __future__ import annotations

import re
from typing import Final


def split_authority(authority: str) -> tuple[str, int | None]:
    """``name[:port]`` (IPv6 in brackets) as a lower-cased name without a trailing dot,
    and its port. Raises ValueError for anything else (userinfo, a bad port, spaces)."""
    if (
        "@" in authority
        or not authority
        or not authority.isascii()  # else lower() maps e.g. the Kelvin sign to "k"
        or authority != authority.strip()
    ):
        raise ValueError(authority)
    if authority.startswith("["):
        name, bracket, rest = authority.partition("]")
        if not bracket:
            raise ValueError(authority)
        name += "]"
        port_text = rest.removeprefix(":") if rest else None
        if rest and not rest.startswith(":"):
            raise ValueError(authority)
    else:
        name, colon, port_text_ = authority.partition(":")
        port_text = port_text_ if colon else None
    port = None
    if port_text is not None:
        if (
            not (port_text.isascii() and port_text.isdigit())
            or len(port_text) > 5
            or not 0 < int(port_text) < 65536
        ):
            raise ValueError(authority)
        port = int(port_text)
    name = name.lower().removesuffix(".")
    if not name or not _HOST_NAME.fullmatch(name):
        raise ValueError(authority)
    return name, port


# A registered name or IPv4 address (letters, digits, - and .), or a bracketed IPv6 literal.
_HOST_NAME: Final = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*|\[[0-9a-f:.]+\]")
