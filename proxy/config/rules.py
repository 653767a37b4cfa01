"""The checks that model fields name: what each kind of key must be, and what it loads as.

Each takes the value as written at its dotted path and a default, and gives back the value
the config holds, or the default after recording a problem (see :data:`.settings.Check`).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any, Final

from ..http.authority import listen_host_problem, split_authority
from .checks import Checks, _type_name
from .settings import Check, keys
from .urls import token_url_problem
from .values import Secret

# A header name (RFC 9110 token), also what Via's pseudonym must be.
_TOKEN: Final = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def text(checks: Checks, value: Any, path: str, default: str) -> str:
    """A non-empty string, ``${VAR}`` resolved."""
    found = checks.text(value, path)
    return default if found is None else found


def secret(checks: Checks, value: Any, path: str, default: Secret) -> Secret:
    """A non-empty string kept as a :class:`Secret`: no problem shows it."""
    found = checks.text(value, path, secret=True)
    return default if found is None else Secret(found)


def positive(checks: Checks, value: Any, path: str, default: float) -> float:
    """A finite number greater than 0."""
    return checks.above_zero(value, path, default)


def non_negative(checks: Checks, value: Any, path: str, default: float) -> float:
    """A finite number of at least 0."""
    return checks.at_least_zero(value, path, default)


def whole(checks: Checks, value: Any, path: str, default: int) -> int:
    """A whole number of at least 1 (a count: 2.0 is refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        checks.fail(path, f"must be a whole number of at least 1, got {value!r}")
        return default
    return value


def flag(checks: Checks, value: Any, path: str, default: bool) -> bool:
    """true or false."""
    if not isinstance(value, bool):
        checks.fail(path, f"must be true or false, got {value!r}")
        return default
    return value


def trusted_cas(checks: Checks, value: Any, path: str, default: str) -> str:
    """A PEM file of CA certificates, loaded as serve will load it."""
    found = checks.trusted_cas(value, path)
    return default if found is None else found


def directory(checks: Checks, value: Any, path: str, default: str) -> str:
    """A directory the proxy may write into."""
    found = checks.writable_directory(value, path)
    return default if found is None else found


def choice(*allowed: str) -> Check[str]:
    """The check of a string that must be one of ``allowed``."""

    def check(checks: Checks, value: Any, path: str, default: str) -> str:
        found = checks.text(value, path)
        if found is None:
            return default
        if found not in allowed:
            checks.fail(path, f"must be one of {', '.join(allowed)}, got {found!r}")
            return default
        return found

    return check


# -- [server] ------------------------------------------------------------------------------


def listen_host(checks: Checks, value: Any, path: str, default: str) -> str:
    """An IP address or host name to listen on (the port has a key of its own)."""
    host = checks.text(value, path)
    if host is None:
        return default
    problem = listen_host_problem(host, f"{path.rpartition('.')[0]}.port")
    if problem is not None:
        checks.fail(path, problem)
        return default
    return host


def port_number(checks: Checks, value: Any, path: str, default: int) -> int:
    """A port to listen on; 0 picks a free one."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        checks.fail(path, f"must be an integer from 0 to 65535, got {value!r}")
        return default
    return value


def networks(
    checks: Checks, value: Any, path: str, default: tuple[IPv4Network | IPv6Network, ...]
) -> tuple[IPv4Network | IPv6Network, ...]:
    """A list of CIDR networks (an address is a network of one); each bad entry is a
    problem of its own."""
    if not isinstance(value, list):
        checks.fail(path, "must be a list of CIDR networks")
        return default
    found: list[IPv4Network | IPv6Network] = []
    for index, cidr in enumerate(value):
        try:
            if not isinstance(cidr, str):
                raise TypeError(cidr)  # ip_network(10) would be 0.0.0.10/32
            found.append(ip_network(cidr, strict=False))
        except (TypeError, ValueError):
            checks.fail(f"{path}[{index}]", f"not a CIDR network: {cidr!r}")
    return tuple(found)


def host_names(checks: Checks, value: Any, path: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """Host names as a Host header spells them, by the rules the proxy applies to requests."""
    if not isinstance(value, list):
        checks.fail(path, "must be a list of host names (name or name:port)")
        return default
    found = []
    for index, host in enumerate(value):
        try:
            if not isinstance(host, str):
                raise TypeError(host)
            split_authority(host)
        except (TypeError, ValueError):
            checks.fail(
                f"{path}[{index}]", f"not a host name or name:port (IPv6 in brackets): {host!r}"
            )
            continue
        found.append(host)
    return tuple(found)


def header_name(checks: Checks, value: Any, path: str, default: str) -> str:
    """A header name (an RFC 9110 token)."""
    name = checks.text(value, path)
    if name is None:
        return default
    if not _TOKEN.fullmatch(name):
        checks.fail(path, f"not a header name: {name!r}")
        return default
    return name


def via_name(checks: Checks, value: Any, path: str, default: str | None) -> str | None:
    """A pseudonym for Via (a token), or false for no Via at all."""
    if value is False:
        return None
    if value is True:
        checks.fail(path, "must be a name, or false to send no Via, got true")
        return default
    name = checks.text(value, path)
    if name is None:
        return default
    if not _TOKEN.fullmatch(name):
        checks.fail(path, f"must be a token (letters, digits, -._~), got {name!r}")
        return default
    return name


# -- retry, rate_limit ----------------------------------------------------------------------


def byte_count(checks: Checks, value: Any, path: str, default: int) -> int:
    """A whole number of bytes, 0 included."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        checks.fail(path, f"must be a whole number of bytes, got {value!r}")
        return default
    return value


def share(checks: Checks, value: Any, path: str, default: float) -> float:
    """A share above 0, at most 1."""
    number = checks.above_zero(value, path, None)
    if number is None:
        return default
    if number > 1:
        checks.fail(path, f"must be a share between 0 and 1, got {value!r}")
        return default
    return number


def statuses(*allowed: int) -> Check[tuple[int, ...]]:
    """The check of a non-empty list of HTTP statuses from ``allowed``, kept sorted."""

    def check(checks: Checks, value: Any, path: str, default: tuple[int, ...]) -> tuple[int, ...]:
        if not isinstance(value, list) or not value or any(s not in allowed for s in value):
            shown = ", ".join(map(str, allowed))
            checks.fail(path, f"must be a list of statuses from {shown}, got {value!r}")
            return default
        return tuple(sorted(set(value)))

    return check


def whole_rate_limit(checks: Checks, path: str, values: dict[str, Any]) -> None:
    """A rate limit's keys together: burst defaults to rate (and must come to at least 1),
    and rate / per must be a rate the limiter can hold."""
    rate = 1.0 if values["rate"] is None else values["rate"]  # missing: already a problem
    burst = values["burst"] or rate  # 0: not given, or refused
    if burst < 1:
        checks.fail(f"{path}.burst", f"must be at least 1, got {burst!r}")
        burst = rate
    per = values["per"]
    # The limiter divides by rate / per: 0 (underflow) or inf (overflow) would fail
    # serve at start-up. A normal float keeps it above 0 when workers divide it too.
    if not sys.float_info.min <= rate / per < math.inf:
        checks.fail(
            path,
            "rate / per must come to a finite number of requests a second above 0, "
            f"got {rate!r} / {per!r}",
        )
    values.update(rate=rate, burst=burst)


# -- [clients.NAME] --------------------------------------------------------------------------


def client_key(checks: Checks, value: Any, path: str, default: Secret) -> Secret:
    """A client's key: 16 printable ASCII characters or more; never shown. A key refused for
    its length or characters is still kept, so that another client with the same key is
    named too."""
    key = checks.text(value, path, secret=True)
    if key is None:
        return default
    if len(key) < 16:
        checks.fail(path, "must be at least 16 characters (use a random token)")
    if not all("!" <= c <= "~" for c in key):
        # The value is never shown; a stray newline from a secrets file is the usual cause.
        checks.fail(
            path,
            "must be printable ASCII without spaces or control characters "
            "(clients send it as a header value)",
        )
    return Secret(key)


def prefix_list(checks: Checks, value: Any, path: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A list of route prefixes as written (no ``${VAR}``); the loader checks that each is
    a route's."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        checks.fail(path, "must be a list of route prefixes")
        return default
    return tuple(value)


def prefix_table(checks: Checks, value: Any, path: str, default: dict[str, Any]) -> dict[str, Any]:
    """A table keyed by route prefix, keys and values as written; the loader checks what
    they name."""
    if not isinstance(value, dict):
        checks.fail(path, f"must be a table, got {_type_name(value)}")
        return default
    return value


# -- [auth.NAME] ------------------------------------------------------------------------------


def token_endpoint(checks: Checks, value: Any, path: str, default: str) -> str:
    """An http(s) URL to ask for tokens; a problem never shows it (it may hold credentials)."""
    found = checks.text(value, path)
    if found is None:
        return default
    problem = token_url_problem(found)
    if problem is not None:
        checks.fail(path, problem)
        return default
    return found


def fraction(checks: Checks, value: Any, path: str, default: float) -> float:
    """A fraction above 0, below 1."""
    number = checks.above_zero(value, path, None)
    if number is None:
        return default
    if number >= 1:
        checks.fail(path, f"must be a fraction below 1, got {number!r}")
        return default
    return number


# A token request field a scheme sets from a key of its own, and that key: where a params
# entry naming the field is pointed to.
_SET_BY_KEY: Final = {
    "client_id": "client_id",
    "client_secret": "client_secret",
    "username": "username",
    "password": "password",
    "scope": "scope",
    "apiKey": "api_key",
    "apiSecret": "api_secret",
    "expiresIn": "expires_in",
}


def request_params(scheme: type[Any] | None) -> Check[Mapping[str, str]]:
    """The check of extra fields for ``scheme``'s token request: strings (``${VAR}``
    resolved, empty allowed, as an endpoint may want one), never one of the fields the
    scheme sets itself (its ``reserved_params``, named in messages by its
    ``scheme_name``); with no scheme known, none is reserved."""
    reserved: frozenset[str] = frozenset() if scheme is None else scheme.reserved_params
    request: str = "" if scheme is None else scheme.scheme_name
    accepted = () if scheme is None else keys(scheme)

    def check(
        checks: Checks, value: Any, path: str, default: Mapping[str, str]
    ) -> Mapping[str, str]:
        table = checks.table(value, path, tuple(value) if isinstance(value, dict) else ())
        found: dict[str, str] = {}
        for name, item in table.items():
            if name in reserved:
                # A params entry must never replace what the scheme sends from its own keys.
                own = _SET_BY_KEY.get(name)
                hint = f"; configure {path.rpartition('.')[0]}.{own} instead"
                shown = hint if own in accepted else ""
                checks.fail(
                    f"{path}.{name}", f"reserved: the {request} token request sets it{shown}"
                )
                continue
            given = checks.text(item, f"{path}.{name}", allow_empty=True)
            if given is not None:
                found[name] = given
        return found

    return check


# -- [state] -------------------------------------------------------------------------------

_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
# A lease longer than this holds back more of a limit's burst than anyone would want; the
# backend caps it further at half of each limit's burst (proxy/state/lease.py).
MAX_LEASE: Final = 1.0


def redis_url(checks: Checks, value: Any, path: str, default: Secret | None) -> Secret | None:
    """A Redis URL (redis://, rediss:// or unix://), kept as a Secret: it may hold a
    password, so no problem shows it, only its scheme."""
    found = checks.text(value, path, secret=True)
    if found is None:
        return default
    scheme = found.partition("://")[0].lower() if "://" in found else ""
    if scheme not in _REDIS_SCHEMES:
        shown = f"{scheme}://" if scheme else "no scheme"
        checks.fail(path, f"must be a redis://, rediss:// or unix:// URL, got {shown}")
        return default
    return Secret(found)


def optional_secret(checks: Checks, value: Any, path: str, default: Secret | None) -> Secret | None:
    """A secret that may be left empty (``"${STATE_KEY:-}"``): empty is none."""
    found = checks.text(value, path, secret=True, allow_empty=True)
    return Secret(found) if found else default


def lease_seconds(checks: Checks, value: Any, path: str, default: float) -> float:
    """Seconds above 0, at most MAX_LEASE."""
    number = checks.above_zero(value, path, None)
    if number is None:
        return default
    if number > MAX_LEASE:
        checks.fail(path, f"must be at most {MAX_LEASE} seconds, got {value!r}")
        return default
    return number


def fleet_share(checks: Checks, value: Any, path: str, default: int | None) -> int | None:
    """ "auto" (None: the fleet size last seen) or a whole number of processes."""
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        checks.fail(path, f'must be "auto" or a whole number of at least 1, got {value!r}')
        return default
    return value


def whole_state(checks: Checks, path: str, values: dict[str, Any]) -> None:
    """The redis backend needs its url (unless the url given was refused already)."""
    key = f"{path}.url"
    refused = any(problem.startswith(f"{key}:") for problem in checks.problems)
    if values["backend"] == "redis" and values["url"] is None and not refused:
        checks.fail(key, 'is required with backend = "redis"')
