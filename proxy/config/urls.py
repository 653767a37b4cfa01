"""What a route prefix, an upstream URL and a token URL may be: parsed once, at load.

The upstream is split with ``urllib.parse.urlsplit``, not yarl: both are lenient in the
same places (a host of ``-h``, ``a..b``, ``999.1.1.1`` or ``h%41``, a path with ``%zz`` or
raw non-ASCII text all pass either), so the host and path checks below are needed with
either; and yarl refuses some URLs (a backslash or text after ``]`` in the host, a port that
is no number) before the user:password@ check could run, with messages of its own. The
Upstream is built with yarl (:attr:`Upstream.url`).

A token URL is read by yarl, since aiohttp sends the token request to what yarl reads: the
same host and path checks then run on its parts (:func:`token_url_problem`).
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address
from typing import Final
from urllib.parse import urlsplit

from yarl import URL

from ..http.authority import NUMERIC_LABEL
from .values import Upstream

# A prefix is one or more path segments of unreserved/sub-delim characters; "." and ".."
# segments are refused separately so a prefix can never climb out of itself.
_PREFIX_SEGMENT: Final = re.compile(r"[A-Za-z0-9_~!$&'()*+,;=:@.-]+")
# RFC 3986 path: pchar and "/", where a '%' must start a %XX escape.
_PATH_CHARS: Final = re.compile(r"[A-Za-z0-9_~!$&'()*+,;=:@./%-]*")
_PERCENT_ESCAPES: Final = re.compile(r"(?:[^%]|%[0-9A-Fa-f]{2})*")
# A DNS label (letters, digits, '-' inside; '_' too, as Docker and some intranets use it).
_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_BAD_HOST: Final = "host is not a valid host name, IPv4 address or [IPv6] literal"
_PORT_DIGITS: Final = re.compile(r"[0-9]+")


def route_prefix(value: str) -> str:
    """A route prefix: ``/``, or ``/`` then plain segments; ValueError says what is wrong."""
    if not value.startswith("/"):
        raise ValueError(f"must start with '/', got {value!r}")
    if value == "/":
        return value
    segments = value[1:].split("/")
    if value.endswith("/"):
        raise ValueError(f"must not end with '/', got {value!r} (write {value.rstrip('/')!r})")
    if any(not _PREFIX_SEGMENT.fullmatch(s) or s in (".", "..") for s in segments):
        raise ValueError(
            f"must be plain path segments (letters, digits, -._~ and "
            f"sub-delimiters; no '.', '..', '%' or empty segments), got {value!r}"
        )
    if segments[0] == "-":
        raise ValueError("the /-/ prefix is reserved for the proxy's own endpoints")
    return value


def upstream_url(value: str) -> Upstream:
    """An ``http(s)://host[:port][/base/path]`` URL; ValueError says what is wrong."""
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        shown = "" if "@" in value else f" {value!r}"  # it may hold user:password@
        raise ValueError(f"invalid URL{shown}: {exc}") from exc
    # Checked first, so that every later message may show the URL.
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry user:password@ (configure an auth table instead)")
    if has_space_or_control(value):
        # urlsplit silently drops tabs and newlines: check the text as written.
        raise ValueError(f"must not contain white space or control characters: {value!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid URL {value!r}: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    if not parts.hostname:
        raise ValueError(f"has no host: {value!r}")
    wrong_host = bad_host(parts.netloc)
    if wrong_host is not None:
        raise ValueError(
            f"host is not a valid host name, IPv4 address or [IPv6] literal: {wrong_host!r}"
        )
    if port == 0:
        raise ValueError(f"port must be from 1 to 65535, got 0: {value!r}")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        # What follows '?' or '#' is not shown: it is where API keys would be.
        cut = min(i for i in (value.find("?"), value.find("#")) if i >= 0)
        raise ValueError(f"must not have a query or fragment: {value[: cut + 1] + '...'!r}")
    wrong_path = path_problem(parts.path)
    if wrong_path is not None:
        raise ValueError(f"base path {wrong_path}: {parts.path!r}")
    segments = parts.path.split("/")
    if any(s.lower() in (".", "..", "%2e", "%2e%2e", ".%2e", "%2e.") for s in segments):
        raise ValueError(f"base path must not contain '.' or '..' segments: {value!r}")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if parts.scheme == "https" else 80
    return Upstream(
        scheme=parts.scheme,
        host=host,
        port=port or default_port,
        base_path=parts.path.rstrip("/"),
    )


def token_url_problem(value: str) -> str | None:
    """What is wrong with a token_url, or None; never the URL itself.

    Read by yarl, the parser aiohttp reads the URL with to send the token request; here as
    written (encoded=True), so the checks see the characters the config holds before any
    percent-encoding, and a URL they pass is one aiohttp sends where it says.
    """
    try:
        url = URL(value, encoded=True)
    except (ValueError, IndexError):  # IndexError: yarl 1.25 on an empty host after "]...@"
        if "\\" not in value:
            return "invalid URL"
        # yarl refuses a backslash in the authority outright, where the checks below name
        # the part it spoils (port, user, host): let them, on a stand-in none of them takes.
        return token_url_problem(value.replace("\\", "^")) or "invalid URL"
    if url.scheme and not url.scheme[0].isalpha():
        # yarl takes "1http:" for a scheme; RFC 3986 does not: the whole is a path.
        return "must be an http:// or https:// URL with a host (no scheme)"
    authority = url.raw_authority
    hostport = authority.rpartition("@")[2]
    if hostport.startswith("[") and not hostport.startswith("[v"):
        # yarl only asks an IPv6 literal for a ':'; an IPvFuture one it checks itself.
        try:
            IPv6Address(hostport[1:].partition("]")[0])
        except ValueError:
            return "invalid URL"
    try:
        port = url.explicit_port  # yarl splits the authority when first asked
    except ValueError:
        return "invalid URL (bad port?)"
    if port is not None and not _PORT_DIGITS.fullmatch(authority.rpartition(":")[2]):
        return "invalid URL (bad port?)"  # yarl reads "+1" or " 1" as 1
    if url.scheme not in ("http", "https") or not url.raw_host:
        found = f"scheme {url.scheme!r}" if url.scheme else "no scheme"
        return f"must be an http:// or https:// URL with a host ({found})"
    if "@" in authority or url.raw_query_string:
        # Credentials belong in their own keys, where they are kept secret.
        return "must not carry user:password@ or a query string"
    if has_space_or_control(value):
        return "must not contain white space or control characters"
    if bad_host(authority) is not None:
        return _BAD_HOST
    if port == 0:
        return "port must be from 1 to 65535, got 0"
    wrong_path = path_problem(url.raw_path)
    return None if wrong_path is None else f"path {wrong_path}"


def has_space_or_control(value: str) -> bool:
    return any(c.isspace() or c < " " or "\x7f" <= c <= "\x9f" for c in value)


def path_problem(path: str) -> str | None:
    """What makes a URL path invalid under RFC 3986 (pchar and '/'), or None."""
    if not _PATH_CHARS.fullmatch(path):
        return "has characters that must be percent-encoded"
    if not _PERCENT_ESCAPES.fullmatch(path):
        return "has a '%' that is not followed by two hex digits"
    return None


def bad_host(netloc: str) -> str | None:
    """The host as written if it is not a host name, IPv4 address or [IPv6] literal, or None.

    urlsplit is lenient: it keeps a backslash or '%' in a name and drops whatever follows
    the ']' of an IPv6 literal, so the host is taken from the netloc as written.
    """
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):
        literal, _, after = hostport[1:].partition("]")
        try:
            IPv6Address(literal)
        except ValueError:
            return f"[{literal}"
        return None if not after or after.startswith(":") else hostport
    host = hostport.partition(":")[0]
    name = host.removesuffix(".")  # a fully qualified name may end in a dot
    labels = name.split(".")
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return host
    if NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            IPv4Address(name)
        except ValueError:
            return host
    return None
