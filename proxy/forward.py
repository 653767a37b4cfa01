"""The catch-all handler: route -> upstream URL -> headers -> exchange -> stream back.

Bodies stream in both directions with backpressure. A request body is held only where a
retry or 401 replay may need it again, or when it is chunked (see bodies.py). The upstream
leg never follows redirects, never decompresses, keeps no cookies and adds no headers of
its own, so what the upstream sends is what the client gets (minus hop-by-hop headers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Final

import structlog
from multidict import CIMultiDict, istr

from .access import Access, Caller
from .bodies import Spooled, request_body
from .errors import (
    BadRequestError,
    InternalError,
    LoopDetectedError,
    ProxyError,
    RateLimitedError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from .headers import X_REQUEST_ID, HeaderPolicy, client_response_headers, max_forwards
from .http.client import UpstreamError
from .http.replies import error_response
from .http.server import Reply, Request
from .http.transport import UpstreamResponse
from .observe.accounting import Accounting, Stats
from .observe.logs import AccessLog
from .observe.metrics import Metrics
from .observe.recent import RecentErrors
from .redirects import REWRITTEN
from .routing import RouteTable
from .upstream import (
    RETRY_AFTER,
    ExchangeRecord,
    Outbound,
    Target,
    exchange,
    retry_after_header,
)

log = structlog.get_logger("proxy.forward")


class Forwarder:
    """Forwards every request that is not the proxy's own to its route's upstream."""

    __slots__ = ("_access", "_accounting", "_headers", "_metrics", "_table", "_targets", "errors")

    def __init__(
        self,
        table: RouteTable,
        targets: Mapping[str, Target],
        access: Access,
        headers: HeaderPolicy,
        metrics: Metrics,
        access_log: AccessLog | None,
    ) -> None:
        self._table = table
        self._targets = targets
        self._access = access
        self._headers = headers
        self._metrics = metrics
        routes = {prefix: target.metrics for prefix, target in targets.items()}
        self._accounting = Accounting(metrics, access_log, routes)
        # Replaced by the process's own ring (app.py), which outlives reloads.
        self.errors = RecentErrors()

    async def handle(self, request: Request, request_id: str) -> Reply | None:
        """Check who asks, route, forward; log one access line and count it, whatever
        happens (a client that hangs up is logged with status 499; an answer the
        shutdown cut off with the status sent, or 503 if none was)."""
        stats = Stats(request_id)
        status = 0  # stays 0 only when the handler is cancelled
        self._metrics.in_flight.inc()
        try:
            client = self._access.identify(request.headers)
            stats.client = client.name if client is not None else None
            route, path = self._table.resolve(request.raw_path, request.headers.get("Host"))
            stats.route = route.prefix
            Access.check_route(client, route.prefix)
            target = self._targets[route.prefix]
            if self._headers.is_loop(request.headers):
                raise LoopDetectedError("this request has passed this proxy already")
            if request.method == "OPTIONS" and _max_forwards(request) == 0:
                # The hop count is used up: the request stops here, answered by us.
                status = 200
                return stats.answered(request, Reply(200, {"X-Request-ID": request_id}))
            await self._forward(request, target, client, path, request_id, stats)
            status = request.status
            return None
        except ProxyError as error:
            # An attempt that failed because the client's body broke off malformed is the
            # client's error, not the upstream's.
            refused = (
                BadRequestError("malformed request body") if request.content.malformed else error
            )
            status = refused.status
            if isinstance(refused, RateLimitedError) and stats.route is not None:
                self._targets[stats.route].metrics.rejections.inc()
            self.errors.note(stats.route, status, refused.code)
            return stats.answered(request, error_response(refused, request_id))
        except _UpstreamBroke:
            status = request.status  # what the client got, then the cut
            stats.cut = "upstream"
            return None
        except Exception:
            # A bug. One error line with the traceback, one count, and the status the
            # client really got: a 500, or the cut of an answer already under way.
            log.exception("handler_failed", route=stats.route)
            if request.started:
                status = request.status
                stats.cut = "error"
                request.cut()
                return None
            status = 500
            internal = InternalError("internal error")
            self.errors.note(stats.route, status, internal.code)
            return stats.answered(request, error_response(internal, request_id))
        finally:
            if not status:
                status = _cut_status(request, stats)
            self._metrics.in_flight.dec()
            self._accounting.account(request, stats, status)

    async def _forward(
        self,
        request: Request,
        target: Target,
        client: Caller | None,
        path: str,
        request_id: str,
        stats: Stats,
    ) -> None:
        headers = self._headers.upstream_request(
            request.headers,
            strip_authorization=target.strip_authorization,
            peer=request.remote,
            host=request.headers.get("Host"),
            scheme=request.scheme,
            request_id=request_id,
            method=request.method,
        )
        provider, limits = (
            (target.provider, target.limits)
            if client is None
            else client.terms[target.route.prefix]
        )
        body, length, replayable = await request_body(
            request,
            target.replay_limit,
            buffering=target.route.request_buffering,
            spool=target.spool,
        )
        try:
            result = stats.exchange = ExchangeRecord()
            # The path and query go out byte for byte, as received: no URL object
            # re-encodes them.
            outbound = Outbound(
                request.method, path, headers, body, length, replayable, provider, limits
            )
            answer = await exchange(target, outbound, result)
            async with answer as upstream_response:
                response_headers = client_response_headers(
                    upstream_response.headers, self._headers.via_entry
                )
                response_headers[X_REQUEST_ID] = request_id
                response_headers[X_PROXY_ATTEMPTS] = str(result.attempts)
                if result.retry_after is not None and RETRY_AFTER not in response_headers:
                    response_headers[RETRY_AFTER] = retry_after_header(result.retry_after)
                if target.redirects is not None and (
                    LOCATION in response_headers or CONTENT_LOCATION in response_headers
                ):
                    target.redirects.rewrite(response_headers)
                await self._stream_back(request, upstream_response, response_headers, target, stats)
        finally:
            if isinstance(body, Spooled):
                body.close()  # frees its disk space at once

    async def _stream_back(
        self,
        request: Request,
        upstream_response: UpstreamResponse,
        headers: CIMultiDict[str],
        target: Target,
        stats: Stats,
    ) -> None:
        # No reason phrase is copied: the upstream's is untrusted text; we write the
        # standard one for the status.
        request.start(upstream_response.status, headers)
        body = upstream_response.iter_any()
        while True:
            try:
                chunk = await anext(body)
            except StopAsyncIteration:
                break
            except (UpstreamError, OSError, TimeoutError) as exc:
                # Headers are gone already: the only honest signal left is an aborted
                # connection, never a clean end that would make a cut body look complete.
                log.warning(
                    "upstream_stream_broken", route=target.route.prefix, error=type(exc).__name__
                )
                if request.retract():
                    # Nothing of the answer reached the client yet: it gets a whole error
                    # instead of a cut one.
                    if isinstance(exc, TimeoutError):
                        raise UpstreamTimeoutError("upstream went silent") from exc
                    raise UpstreamUnreachableError("the upstream's answer broke off") from exc
                request.cut()
                raise _UpstreamBroke from exc
            stats.bytes_out += len(chunk)
            try:
                await request.write(chunk)
            except ConnectionError as exc:
                raise _ClientAborted from exc  # the client left; nothing to tell anyone
        request.finish()


def _cut_status(request: Request, stats: Stats) -> int:
    """The status of an answer its handler never finished: 499 (nginx's "client closed
    the request") when the client left; when the shutdown cut it, the status already
    sent, else 503, as a client retrying elsewhere should read it."""
    if request.shut_down:
        stats.cut = "shutdown"
        return request.status if request.head_sent else 503
    stats.cut = "client"
    return 499


def _max_forwards(request: Request) -> int | None:
    try:
        return max_forwards(request.headers)
    except ValueError:
        # Our own words: the value is not repeated.
        raise BadRequestError("Max-Forwards must be one non-negative integer") from None


class _ClientAborted(asyncio.CancelledError):
    """Ends a handler whose client closed the connection."""


class _UpstreamBroke(Exception):
    """The upstream's answer broke off after its head went to the client, which was cut."""


X_PROXY_ATTEMPTS: Final = istr("X-Proxy-Attempts")
LOCATION, CONTENT_LOCATION = REWRITTEN
