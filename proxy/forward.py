"""The catch-all handler: route -> upstream URL -> headers -> exchange -> stream back.

Bodies stream in both directions with backpressure; nothing is buffered whole (small bodies
are held only where a retry or 401 replay may need them again). The upstream leg never
follows redirects, never decompresses, keeps no cookies and adds no headers of its own, so
what the upstream sends is what the client gets (minus hop-by-hop headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Mapping
from typing import Final

import aiohttp
import structlog
from aiohttp import web
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, istr
from yarl import URL

from .errors import ProxyError, error_response
from .headers import (
    X_REQUEST_ID,
    client_response_headers,
    request_id_from,
    upstream_request_headers,
)
from .routing import RouteTable
from .upstream import RETRY_AFTER, Target, exchange, retry_after_header

log = structlog.get_logger("proxy.forward")


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
        body, replayable = await _request_body(request, target.replay_limit)
        result = await exchange(target, request.method, url, headers, body, replayable, request_id)
        async with result.response as upstream_response:
            response_headers = client_response_headers(upstream_response.headers)
            response_headers[X_REQUEST_ID] = request_id
            response_headers[X_PROXY_ATTEMPTS] = str(result.attempts)
            if result.retry_after is not None and RETRY_AFTER not in response_headers:
                response_headers[RETRY_AFTER] = retry_after_header(result.retry_after)
            return await self._stream_back(
                request, upstream_response, response_headers, target, request_id
            )

    async def _stream_back(
        self,
        request: web.Request,
        upstream_response: aiohttp.ClientResponse,
        headers: CIMultiDict[str],
        target: Target,
        request_id: str,
    ) -> web.StreamResponse:
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
            _reset(request)
            raise _ClientAborted from exc
        await response.write_eof()
        return response


async def _request_body(
    request: web.Request, replay_limit: int
) -> tuple[bytes | StreamReader | None, bool]:
    """The body to send upstream, and whether it can be sent again.

    Bodies of known length up to ``replay_limit`` are read into memory so a retry or 401
    replay sends them again exactly; anything else streams once, because a consumed stream
    would replay as an empty body (and the upstream would answer 200 to it).
    """
    if not request.body_exists:
        return None, True
    length = request.content_length
    if length is not None and length <= replay_limit:
        return await request.content.readexactly(length), True
    return request.content, False


def _reset(request: web.Request) -> None:
    """Abort the client connection with a TCP reset, not a FIN: for a close-delimited body
    (HTTP/1.0) a FIN would be a clean end, and the cut body would look complete."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _ClientAborted(asyncio.CancelledError):
    """Ends a handler whose connection we aborted; aiohttp treats it as a client gone away."""


X_PROXY_ATTEMPTS: Final = istr("X-Proxy-Attempts")
SKIP_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
