"""The seam between the policy and the wire: one request out, one answer back.

The exchange (proxy/upstream.py: retries, 401 replays, pauses, limits) reaches its upstream
only through a :class:`Transport`, as httpx's client does through ``AsyncBaseTransport``.
The pool of keep-alive connections (client.py) is the real one; tests script the answers
with a mock transport (tests/mocktransport.py), so the policy is tested without sockets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, Self

from multidict import CIMultiDict


class BodyStream(Protocol):
    """A request body that streams: readany() returns b"" at its end."""

    async def readany(self) -> bytes: ...


class UpstreamRequest(Protocol):
    """A request as the wire sends it; read, never changed, by the transport.

    ``length`` is the body's length when it is known: it goes out as Content-Length (0
    for an explicitly empty body, even with ``body`` None). When it is not known, a
    streamed body goes chunked, a bytes body declares its own length, and no body at all
    goes without a framing header.
    """

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str:
        """The request target (path and query), sent byte for byte as given."""
        ...

    @property
    def headers(self) -> CIMultiDict[str]:
        """End-to-end headers only: the transport adds Host and the framing header."""
        ...

    @property
    def body(self) -> bytes | BodyStream | None: ...

    @property
    def length(self) -> int | None: ...


class UpstreamResponse(Protocol):
    """An upstream's answer: its head at once, its body as it arrives.

    Whoever receives one owns the connection under it until :meth:`release` (or the end
    of ``async with``): an answer not passed on must be released, or it holds a pooled
    connection for good."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> CIMultiDict[str]: ...

    def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises UpstreamError or TimeoutError if it breaks off."""
        ...

    def release(self) -> None:
        """Done with the answer, read or not; calls after the first do nothing."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None:
        """Releases the answer."""
        ...


class Transport(Protocol):
    """Sends one request to one upstream origin and returns its answer's head.

    No retries of its own beyond what HTTP allows on a stale pooled connection (an
    idempotent request whose body is bytes or none, when nothing came back). Raises
    TimeoutError when no connection is had within ``connect_timeout`` or the upstream is
    silent for ``read_timeout``; OSError or client.UpstreamError when it cannot be reached
    or breaks HTTP."""

    async def send(
        self, request: UpstreamRequest, *, connect_timeout: float, read_timeout: float
    ) -> UpstreamResponse: ...
