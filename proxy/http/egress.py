"""Egress through a forward proxy: which origins go through one, and the CONNECT tunnel.

Where outbound traffic must pass a corporate proxy, every upstream connection is a tunnel:

    TCP to the egress proxy -> "CONNECT host:port" -> 2xx -> TLS over the tunnel (https)
    -> the usual HTTP/1.1 exchange (client.py), byte for byte as on a direct connection

Plain ``http`` upstreams go through a CONNECT tunnel too, not as absolute-form requests:
the wire code stays identical for both schemes, a pooled connection stays one upstream's,
and the egress proxy cannot rewrite what we send. (A proxy whose policy allows CONNECT only
to port 443, squid's default, refuses it with 403; the log says so.)

Which origins skip the proxy follows curl's NO_PROXY: a comma list of host names, each
matching itself and its subdomains (a leading dot or ``*.`` is ignored), IP addresses and
CIDR networks matching IP literals only (no DNS lookup), ``*`` for everything, and
``name:port`` / ``[v6]:port`` for one port only.

The egress proxy's credentials never leave an :class:`EgressProxy` except as the
Proxy-Authorization header of a CONNECT: its repr, ``shown`` and every error show the
proxy without its password.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypeVar
from urllib.parse import unquote, urlsplit

from .client import MAX_HEAD, UpstreamError

P = TypeVar("P", bound=asyncio.BaseProtocol)

# The end of the proxy's answer head; a bare LF is tolerated as RFC 9112 §2.2 allows.
_HEAD_END: Final = re.compile(rb"\r?\n\r?\n")
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?:[ \t][^\r\n]*)?\r?$")
# curl's default port for a proxy URL without one.
DEFAULT_PORT: Final = 1080
ENV: Final = "env"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressError(UpstreamError):
    """The egress proxy could not be reached, or would not open the tunnel. ``proxy`` is
    the proxy as shown (no password); ``status`` its answer to CONNECT, if it gave one."""

    def __init__(self, message: str, proxy: str, status: int | None = None) -> None:
        super().__init__(message)
        self.proxy = proxy
        self.status = status


@dataclass(frozen=True, slots=True)
class EgressProxy:
    """An HTTP forward proxy that upstream connections are tunnelled through."""

    host: str  # bare: an IPv6 literal without brackets
    port: int
    shown: str  # the proxy's URL with the password as ***, for logs and ``check``
    authorization: str | None = field(default=None, repr=False)  # Proxy-Authorization value

    async def connect(
        self,
        factory: Callable[[], P],
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        server_hostname: str | None,
    ) -> P:
        """A connection to ``host:port`` through this proxy, TLS over the tunnel when
        ``tls`` is given, with ``factory``'s protocol attached as a direct connection
        would have it. The caller bounds the whole handshake with its connect timeout."""
        loop = asyncio.get_running_loop()
        try:
            transport, reader = await loop.create_connection(
                lambda: _AnswerReader(loop, self.shown), self.host, self.port
            )
        except OSError as exc:
            raise EgressError(
                f"egress proxy {self.shown} unreachable: {type(exc).__name__}", self.shown
            ) from exc
        try:
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            lines = [f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"]
            if self.authorization is not None:
                lines.append(f"Proxy-Authorization: {self.authorization}\r\n")
            lines.append("\r\n")
            transport.write("".join(lines).encode("ascii"))
            head, rest = await reader.answer
            check_answer(head, self.shown)
            if rest:
                # Nothing may come before our first byte through the tunnel.
                raise EgressError(
                    f"egress proxy {self.shown} sent bytes ahead of the tunnel", self.shown
                )
            protocol = factory()
            if tls is not None:
                tunnelled = await loop.start_tls(
                    transport, protocol, tls, server_hostname=server_hostname
                )
                if tunnelled is None:  # only for a transport closed meanwhile
                    raise EgressError(f"egress proxy {self.shown} closed the tunnel", self.shown)
                protocol.connection_made(tunnelled)
            else:
                transport.set_protocol(protocol)
                protocol.connection_made(transport)
                transport.resume_reading()
        except BaseException:
            transport.close()
            raise
        return protocol


def check_answer(head: bytes, shown: str) -> int:
    """The status of the proxy's answer to CONNECT when it opens the tunnel: any 2xx,
    which has no body whatever Content-Length it carries (RFC 9110 §9.3.6). Raises
    EgressError naming ``shown`` for any other answer."""
    first = head.split(b"\n", 1)[0]
    matched = _STATUS_LINE.fullmatch(first)
    if matched is None:
        raise EgressError(f"egress proxy {shown} gave a malformed answer to CONNECT", shown)
    status = int(matched.group(1))
    if not 200 <= status < 300:
        raise EgressError(f"egress proxy {shown} refused the tunnel: {status}", shown, status)
    return status


class _AnswerReader(asyncio.Protocol):
    """Reads the head of the egress proxy's answer to CONNECT, then stops reading, so that
    nothing after it reaches anyone but the connection's real protocol."""

    def __init__(self, loop: asyncio.AbstractEventLoop, shown: str) -> None:
        self._shown = shown
        self.answer: asyncio.Future[tuple[bytes, bytes]] = loop.create_future()
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        self._buffer += data
        end = _HEAD_END.search(self._buffer)
        if end is None:
            if len(self._buffer) > MAX_HEAD:
                self._fail("answer too large")
            return
        assert self._transport is not None
        self._transport.pause_reading()
        buffer = self._buffer
        self.answer.set_result((bytes(buffer[: end.start()]), bytes(buffer[end.end() :])))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self._fail("closed before answering")

    def _fail(self, why: str) -> None:
        self.answer.set_exception(EgressError(f"egress proxy {self._shown} {why}", self._shown))


# -- which origins go through it ------------------------------------------------------------


def parse_proxy_url(text: str) -> EgressProxy:
    """An ``http://[user:password@]host[:port]`` proxy URL (no scheme: http; no port:
    1080, as curl). Raises ValueError with a message that never shows the password."""
    url = text.strip()
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("must be an http://host:port URL") from None
    if parts.scheme.lower() != "http":
        raise ValueError(f"must be an http:// proxy URL, got {parts.scheme}://")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "#" in url:
        # "http://user:4711#pw@host" splits at '#': the host would be "user", and the
        # password's first digits its port. A proxy URL has nothing after the authority.
        raise ValueError(
            "must be http://[user:password@]host[:port] with nothing after it; "
            "write '#', '?', '/' or '@' in a password as %23, %3F, %2F, %40"
        )
    host = parts.hostname
    if not host:
        raise ValueError("must name the proxy's host")
    port = port or DEFAULT_PORT
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    authorization = None
    shown = f"http://{authority}"
    if parts.username is not None:
        user, password = unquote(parts.username), unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        authorization = f"Basic {token}"
        shown = f"http://{parts.username}{':***' if parts.password else ''}@{authority}"
    return EgressProxy(host, port, shown, authorization)


class NoProxy:
    """Origins exempt from the egress proxy, as curl reads NO_PROXY (see the module doc)."""

    __slots__ = ("_all", "_names", "_networks", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._all = False
        self._names: list[tuple[str, int | None]] = []
        self._networks: list[tuple[IPNetwork, int | None]] = []
        for raw in text.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                self._all = True
                continue
            name, port = _split_port(entry)
            try:
                self._networks.append((ipaddress.ip_network(name, strict=False), port))
                continue
            except ValueError:
                pass
            name = name.removeprefix("*").removeprefix(".").rstrip(".")
            if name:
                self._names.append((name, port))

    def exempts(self, host: str, port: int) -> bool:
        if self._all:
            return True
        host = host.lower().strip("[]").rstrip(".")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return any(
                (host == name or host.endswith("." + name)) and want in (None, port)
                for name, want in self._names
            )
        return any(address in net and want in (None, port) for net, want in self._networks)


def _split_port(entry: str) -> tuple[str, int | None]:
    """``[v6]:port``, ``host:port`` or a bare host / address / network."""
    if entry.startswith("["):
        host, _, tail = entry[1:].partition("]")
        return host, int(tail[1:]) if tail[1:].isdigit() else None
    host, colon, tail = entry.rpartition(":")
    if colon and tail.isdigit() and ":" not in host:
        return host, int(tail)
    return entry, None


@dataclass(frozen=True, slots=True)
class Egress:
    """Which egress proxy, if any, each upstream origin is reached through."""

    http: EgressProxy | None
    https: EgressProxy | None
    no_proxy: NoProxy = field(compare=False)
    source: str  # "env" or "url", for ``check``

    def proxy_for(self, scheme: str, host: str, port: int) -> EgressProxy | None:
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self.no_proxy.exempts(host, port):
            return None
        return proxy

    def describe(self) -> str:
        """One line for ``check``: where each scheme goes, never a password."""
        if self.source == ENV:
            http = f"via {self.http.shown}" if self.http else "direct"
            https = f"via {self.https.shown}" if self.https else "direct"
            text = f"egress: from the environment: http {http}, https {https}"
        else:
            assert self.https is not None
            text = f"egress: via {self.https.shown}"
        exempt = self.no_proxy.text.strip()
        return text + (f", NO_PROXY {exempt!r}" if exempt else "")


def _env(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of ``names`` set and non-empty, lower case before upper as curl reads
    them; (variable, value)."""
    for name in names:
        for variable in (name.lower(), name.upper()):
            value = environ.get(variable, "").strip()
            if value:
                return variable, value
    return None


def egress_from(setting: str | None, environ: Mapping[str, str]) -> Egress | None:
    """The egress ``[server] egress_proxy`` asks for: None (direct, whatever the
    environment says), ``"env"`` (HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY, in
    either case) or a proxy URL for both schemes. Raises ValueError listing every variable
    that does not hold a usable proxy URL."""
    if setting is None:
        return None
    if setting != ENV:
        proxy = parse_proxy_url(setting)
        return Egress(proxy, proxy, NoProxy(""), "url")
    chosen: dict[str, EgressProxy | None] = {}
    problems = []
    for scheme in ("http", "https"):
        found = _env(environ, f"{scheme}_proxy", "all_proxy")
        chosen[scheme] = None
        if found is not None:
            try:
                chosen[scheme] = parse_proxy_url(found[1])
            except ValueError as exc:
                problems.append(f"{found[0]}: {exc}")
    if problems:
        raise ValueError("; ".join(problems))
    exempt = _env(environ, "no_proxy")
    return Egress(chosen["http"], chosen["https"], NoProxy(exempt[1] if exempt else ""), ENV)
