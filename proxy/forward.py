"""The catch-all handler: route -> upstream URL -> headers -> send -> stream back.

Bodies stream in both directions with backpressure; nothing is buffered whole. The upstream
leg never follows redirects, never decompresses, keeps no cookies and adds no headers of its
own, so what the upstream sends is what the client gets (minus hop-by-hop headers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Final

import aiohttp
import structlog
from aiohttp import web
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, istr
from yarl import URL

from .auth.base import TokenProvider
from .config import RouteConfig
from .errors import (
    ProxyError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
    error_response,
)
from .headers import (
    X_REQUEST_ID,
    client_response_headers,
    request_id_from,
    upstream_request_headers,
)
from .routing import RouteTable

log = structlog.get_logger("proxy.forward")


class Target:
    """What a route needs per request, decided once at start-up."""

    __slots__ = ("provider", "route", "session", "strip_authorization", "timeout")

    def __init__(
        self,
        route: RouteConfig,
        session: aiohttp.ClientSession,
        provider: TokenProvider | None = None,
    ) -> None:
        self.route = route
        self.session = session
        self.provider = provider
        # A route with auth injects its own token: the client's credential must not leak
        # to the vendor, nor be mistaken for ours.
        self.strip_authorization = route.auth is not None
        # total=None: a long download must not be cut; sock_read bounds each silence instead.
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=route.timeout.connect, sock_read=route.timeout.read
        )


class Forwarder:
    """Forwards every request that is not the proxy's own to its route's upstream."""

    __slots__ = ("_table", "_targets")

    def __init__(self, table: RouteTable, targets: Mapping[str, Target]) -> None:
        self._table = table
        self._targets = targets

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = request_id_from(request.headers)
        try:
            route, path, query = self._table.resolve(request.raw_path)
            target = self._targets[route.prefix]
            return await self._forward(request, target, path, query, request_id)
        except ProxyError as error:
            return error_response(error, request_id)

    async def _forward(
        self, request: web.Request, target: Target, path: str, query: str, request_id: str
    ) -> web.StreamResponse:
        upstream = target.route.upstream
        # encoded=True: the path and query reach the upstream byte for byte, as received.
        url = URL.build(
            scheme=upstream.scheme,
            host=upstream.host,
            port=upstream.port,
            path=path,
            query_string=query,
            encoded=True,
        )
        headers = upstream_request_headers(
            request.headers,
            strip_authorization=target.strip_authorization,
            peer=request.remote,
            host=request.headers.get("Host"),
            scheme=request.scheme,
            request_id=request_id,
        )
        provider = target.provider
        token = None
        if provider is not None:
            token = await provider.token()
            headers[AUTHORIZATION] = "Bearer " + token
        body, replayable = await _request_body(request, buffer=provider is not None)
        upstream_response = await self._send(request, target, url, headers, body, request_id)
        if upstream_response.status == 401 and provider is not None and token is not None:
            # The issuer's token was refused (revoked, rotated, clock skew): renew it, and
            # replay once when we hold the body; a second 401 is the upstream's answer.
            provider.invalidate(token)
            if replayable:
                upstream_response.release()
                token = await provider.token()
                headers[AUTHORIZATION] = "Bearer " + token
                upstream_response = await self._send(
                    request, target, url, headers, body, request_id
                )
        async with upstream_response:
            return await self._stream_back(request, upstream_response, target, request_id)

    async def _send(
        self,
        request: web.Request,
        target: Target,
        url: URL,
        headers: CIMultiDict[str],
        body: bytes | StreamReader | None,
        request_id: str,
    ) -> aiohttp.ClientResponse:
        upstream = target.route.upstream
        try:
            return await target.session.request(
                request.method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=target.timeout,
            )
        except TimeoutError as exc:
            log.warning(
                "upstream_timeout",
                route=target.route.prefix,
                upstream=upstream.url,
                request_id=request_id,
                phase="headers",
            )
            raise UpstreamTimeoutError("upstream did not answer in time") from exc
        except aiohttp.ClientError as exc:
            log.warning(
                "upstream_unreachable",
                route=target.route.prefix,
                upstream=upstream.url,
                request_id=request_id,
                error=type(exc).__name__,
            )
            raise UpstreamUnreachableError("could not reach the upstream") from exc

    async def _stream_back(
        self,
        request: web.Request,
        upstream_response: aiohttp.ClientResponse,
        target: Target,
        request_id: str,
    ) -> web.StreamResponse:
        headers = client_response_headers(upstream_response.headers)
        headers[X_REQUEST_ID] = request_id
        # No reason phrase is copied: the upstream's is untrusted text; aiohttp picks the
        # standard one for the status.
        response = web.StreamResponse(status=upstream_response.status, headers=headers)
        await response.prepare(request)
        try:
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Headers are gone already: the only honest signal left is an aborted connection,
            # never a clean end that would make a truncated body look complete.
            log.warning(
                "upstream_stream_broken",
                route=target.route.prefix,
                request_id=request_id,
                error=type(exc).__name__,
            )
            if request.transport is not None:
                request.transport.abort()
            raise _ClientAborted from exc
        await response.write_eof()
        return response


async def _request_body(
    request: web.Request, *, buffer: bool
) -> tuple[bytes | StreamReader | None, bool]:
    """The body to send upstream, and whether it can be sent again.

    Small bodies of known length are read into memory when a replay may be needed (401 with
    a token); everything else streams once: a consumed stream would replay as an empty body.
    """
    if not request.body_exists:
        return None, True
    length = request.content_length
    if buffer and length is not None and length <= MAX_REPLAY_BODY:
        return await request.read(), True
    return request.content, False


class _ClientAborted(asyncio.CancelledError):
    """Ends a handler whose connection we aborted; aiohttp treats it as a client gone away."""


# Bodies up to this size are buffered on routes with auth so a 401 can be replayed exactly.
MAX_REPLAY_BODY: Final = 1024 * 1024
AUTHORIZATION: Final = istr("Authorization")
SKIP_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
