"""Host names as the Host header and absolute-form targets spell them (RFC 9110 4.2.3),
and as a listen address (``server.host``, ``--host``) may be written.

Kept apart from routing so the config loader can check ``server.hosts`` with the very
same rules the proxy applies to requests, and the command line ``--host`` with the rules
of ``server.host``.
"""

from __future__ import annotations

import re
from ipaddress import ip_address
from typing import Final

# A host name label (RFC 1123 2.1): letters, digits and '-' inside, at most 63 characters.
_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# A last label that resolvers read as a number: the whole host must then be an IPv4 address
# ("1.2.3" and "0x7f.1" would listen on 1.2.0.3 and 127.0.0.1).
NUMERIC_LABEL: Final = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")


def listen_host_problem(host: str, port_key: str) -> str | None:
    """What makes ``host`` no listen address, or None: it must be an IP address (IPv6
    without brackets, a %scope allowed) or a host name of RFC 1123 labels. Nothing is looked
    up. ``port_key`` is where the hint for a ``host:port`` sends the port."""
    if _is_listen_host(host):
        return None
    problem = f"must be an IP address (IPv6 without brackets) or a host name, got {host!r}"
    name, colon, port = host.rpartition(":")
    if colon and port.isascii() and port.isdigit() and _is_listen_host(name.strip("[]")):
        return f"{problem} (it looks like host:port: put the port in {port_key})"
    if host.startswith("[") and host.endswith("]") and _is_listen_host(host[1:-1]):
        return f"{problem} (write it without brackets: {host[1:-1]!r})"
    return problem


def _is_listen_host(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        pass
    else:
        return True
    name = host.removesuffix(".")  # a fully qualified name may end in a dot
    labels = name.split(".")
    return (
        len(name) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        and not NUMERIC_LABEL.fullmatch(labels[-1])
    )


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
