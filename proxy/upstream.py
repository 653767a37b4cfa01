"""One request's exchange with its upstream: every attempt takes a rate-limit slot, waits
out a route pause, carries a fresh token, and is retried when the upstream throttles.

    admit (pause, limits) -> token -> send -> 401? renew + replay once
                                          -> 429/503? wait (Retry-After or backoff) + retry
                                          -> RateLimit says exhausted? pause the route

The upstream is reached through the route's Transport (proxy/http/transport.py) and time
through its Clock (proxy/clock.py), so all of this runs in tests on scripted answers and
a fake clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import structlog
from multidict import CIMultiDict, istr

from .adaptive import AdaptiveRate
from .auth.base import TokenProvider
from .bodies import Spool
from .clock import MONOTONIC, Clock
from .config import RouteConfig
from .errors import RateLimitedError, UpstreamTimeoutError, UpstreamUnreachableError
from .http.client import UpstreamError
from .http.egress import EgressError
from .http.transport import BodyStream, Transport, UpstreamResponse
from .limits import Limit
from .observe.metrics import Metrics, RouteMetrics
from .redirects import Redirects
from .retry import RetryBudget, exhausted_for, retry_delay
from .state.base import RoutePause

log = structlog.get_logger("proxy.upstream")

AUTHORIZATION = istr("Authorization")
RETRY_AFTER = istr("Retry-After")


class Target:
    """What a route needs per request, decided once at start-up."""

    __slots__ = (
        "adaptive",
        "budget",
        "clock",
        "connect_timeout",
        "limits",
        "metrics",
        "provider",
        "read_timeout",
        "redirects",
        "replay_limit",
        "retry",
        "route",
        "route_pause",
        "spool",
        "strip_authorization",
        "transport",
    )

    def __init__(
        self,
        route: RouteConfig,
        transport: Transport,
        provider: TokenProvider | None = None,
        limits: tuple[Limit, ...] = (),
        metrics: Metrics | None = None,
        spool: Spool | None = None,
        *,
        pause: RoutePause,
        clock: Clock = MONOTONIC,
    ) -> None:
        self.route = route
        self.metrics = RouteMetrics(metrics or Metrics(), route.prefix)
        self.transport = transport
        self.provider = provider
        self.limits = limits
        self.retry = route.retry
        # The pause and the learned rate keep time on the clock the exchange reads; the
        # deadlines handed to the limits are on it too, so they must share its time.
        self.clock = clock
        self.route_pause = pause
        # Learned from the upstream's 429s; never above the route's own limits.
        ceiling = min((limit.rate for limit in limits), default=None)
        self.adaptive = AdaptiveRate(f"route {route.prefix}", ceiling, clock)
        self.budget = RetryBudget(route.retry.budget)
        # A route with auth injects its own token: the client's credential must not leak
        # to the vendor, nor be mistaken for ours.
        self.strip_authorization = route.auth is not None
        # Bodies are buffered only when a second attempt is possible: 429 retries, or a
        # 401 replay with a fresh token. None: no body is ever held for a replay.
        replays = route.retry.attempts > 1 or provider is not None
        self.replay_limit = route.retry.max_body if replays else None
        # No total limit: a long download must not be cut; read bounds each silence of the
        # upstream instead, and connect also bounds the wait for a free pooled connection.
        self.connect_timeout = route.timeout.connect
        self.read_timeout = route.timeout.read
        self.spool = spool or Spool()  # shared by every route of the process
        self.redirects = Redirects(route) if route.rewrite_location else None


@dataclass(slots=True, eq=False)
class Outbound:
    """One request on its way upstream: what the wire sends (an UpstreamRequest), whether
    it may be sent again, the provider whose token it carries and the limits it passes
    (the route's, or a client's own terms for the route).

    ``length`` is the Content-Length when known, else None (see proxy/http/transport.py).
    ``headers`` are the one part the exchange changes: each attempt sets its own
    Authorization when there is a provider."""

    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes | BodyStream | None
    length: int | None
    replayable: bool  # the body can be sent again (bytes, or none)
    provider: TokenProvider | None = None
    limits: tuple[Limit, ...] = ()


@dataclass(slots=True)
class ExchangeRecord:
    """What it took to get the upstream's answer, filled in as :func:`exchange` goes."""

    attempts: int = 0  # requests sent upstream
    limiter_wait: float = 0.0
    paused: float = 0.0  # of limiter_wait, seconds spent in route pauses
    retry_after: float | None = None  # to add when passing on a throttling answer without one
    retries: int = 0  # attempts repeated after a 429 (or 503)
    token_renewals: int = 0  # replays after a 401 with a fresh token
    upstream_seconds: float = 0.0  # first attempt sent -> final answer's headers
    status: int | None = None  # the final answer's status


async def exchange(target: Target, outbound: Outbound, record: ExchangeRecord) -> UpstreamResponse:
    """Send ``outbound`` to the route's upstream until it gives an answer worth passing
    on, and return that answer: the caller owns it (and must release it).

    Every attempt waits out the route's pause and learned rate, takes a slot of each of
    ``outbound.limits`` and carries a fresh token. A 401 renews the token and, if the body
    can be sent again, replays once (a second 401 is the answer). A 429 (or a 503 with
    Retry-After, where the route retries 503s) is retried while the attempts, the route's
    max_wait and the retry budget allow; a Retry-After pauses the whole route. An answer
    whose RateLimit headers say nothing is left pauses the route and is returned.

    ``record`` is filled in as the exchange goes, so an exchange that ends in an error
    still tells what reached the upstream. Raises RateLimitedError (a limit, the learned
    rate or a pause would wait too long: nothing more was sent), UpstreamTimeoutError,
    UpstreamUnreachableError, or the provider's TokenUnavailableError. Every answer not
    returned has been released.
    """
    clock = target.clock
    arrival = clock.monotonic()
    retry = target.retry
    budget = target.budget
    adaptive = target.adaptive
    provider = outbound.provider
    headers = outbound.headers
    replayable = outbound.replayable
    budget.active += 1
    retrying = False
    attempt = 0
    first_sent: float | None = None
    try:
        while True:
            attempt += 1
            await _admit(target, outbound.limits, arrival, record, first=attempt == 1)
            token = None
            if provider is not None:
                token = await provider.token()
                headers[AUTHORIZATION] = "Bearer " + token
            sent_at = clock.monotonic()
            if first_sent is None:
                first_sent = sent_at
            adaptive.sent(sent_at)
            record.attempts = attempt
            try:
                response = await target.transport.send(
                    outbound,
                    connect_timeout=target.connect_timeout,
                    read_timeout=target.read_timeout,
                )
            except (OSError, UpstreamError) as exc:  # TimeoutError is an OSError
                raise _unreached(target, exc) from exc
            try:
                status = record.status = response.status
                if status == 401 and provider is not None and token is not None:
                    if record.token_renewals:
                        return response  # refused twice: the upstream's answer
                    # The token was refused (revoked, rotated, skew): renew it, and replay
                    # once if we hold the body; a second 401 is the upstream's answer.
                    provider.invalidate(token)
                    if replayable:
                        record.token_renewals = 1
                        response.release()
                        continue
                elif status in retry.on and (status == 429 or RETRY_AFTER in response.headers):
                    adaptive.throttled(sent_at)
                    delay, hinted = retry_delay(retry, attempt, response.headers)
                    if hinted:
                        target.route_pause.pause(delay, f"upstream_{status}")
                    # The budget keeps retries from multiplying the load; it limits
                    # retries, not requests that waited in a pause: those were released
                    # at the learned rate, and keep their attempts.
                    can_retry = (
                        replayable
                        and attempt < retry.attempts
                        and clock.monotonic() + delay <= arrival + retry.max_wait
                        and (retrying or record.paused > 0 or budget.allows_retry())
                    )
                    if not can_retry:
                        log.debug(
                            "upstream_throttled_not_retried",
                            route=target.route.prefix,
                            status=status,
                            attempt=attempt,
                            delay_s=round(delay, 3),
                            replayable=replayable,
                            attempts_left=retry.attempts - attempt,
                            within_max_wait=clock.monotonic() + delay <= arrival + retry.max_wait,
                        )
                        # Without the upstream's own Retry-After, tell the client the wait we
                        # would have waited.
                        record.retry_after = None if hinted else delay
                        return response
                    if not retrying:
                        retrying = True
                        budget.retrying += 1
                    record.retries += 1
                    response.release()
                    log.info(
                        "upstream_throttled",
                        route=target.route.prefix,
                        status=status,
                        attempt=attempt,
                        delay_s=round(delay, 3),
                    )
                    if not hinted:
                        await clock.sleep(delay)  # a hinted delay is waited out in _admit
                    continue
                else:
                    pause = exhausted_for(response.headers)
                    if pause:
                        target.route_pause.pause(pause, "ratelimit_exhausted")
                return response
            except BaseException:
                response.release()  # an answer we will not pass on holds a connection
                raise
    finally:
        if first_sent is not None:
            record.upstream_seconds = clock.monotonic() - first_sent
        budget.active -= 1
        if retrying:
            budget.retrying -= 1


async def _admit(
    target: Target,
    limits: tuple[Limit, ...],
    arrival: float,
    record: ExchangeRecord,
    *,
    first: bool,
) -> None:
    """Wait out a route pause, the learned rate's schedule, and take a slot from every
    limit; add the seconds waited to ``record``."""
    clock = target.clock
    started = clock.monotonic()
    # Pauses and the learned rate hold a request at most retry.max_wait from its arrival.
    give_up = arrival + target.retry.max_wait
    # One deadline for all limits: a request passing a route, an auth and a client limit
    # waits at most the smallest max_wait in all, not the sum of them.
    deadline: float | None = None  # no limits: nothing to wait for
    if not first:
        deadline = give_up
    elif limits:
        deadline = min(give_up, started + min(limit.max_wait for limit in limits))
    while True:
        paused = target.route_pause.remaining()
        if paused > 0:
            if clock.monotonic() + paused > give_up:
                raise RateLimitedError(f"route {target.route.prefix} paused by upstream", paused)
            before = clock.monotonic()
            await clock.sleep(paused)
            record.paused += clock.monotonic() - before
        if not target.adaptive.active:
            break  # the common case: nothing learned, nothing to pace (no coroutine)
        # Released from a pause at the learned rate, not all in the same millisecond.
        paced = await target.adaptive.pace(give_up if deadline is None else deadline, arrival)
        if not paced or not target.route_pause.remaining():
            break  # (a pause that began while we were paced is waited out first)
    for limit in limits:
        await limit.acquire(deadline)
    record.limiter_wait += clock.monotonic() - started


def _unreached(target: Target, exc: Exception) -> UpstreamTimeoutError | UpstreamUnreachableError:
    """Our 504 or 502 for an upstream the transport could not get an answer's head from."""
    route, upstream = target.route.prefix, target.route.upstream.url
    if isinstance(exc, TimeoutError):
        log.warning("upstream_timeout", route=route, upstream=upstream, phase="headers")
        return UpstreamTimeoutError("upstream did not answer in time")
    if isinstance(exc, EgressError):
        # The egress proxy as shown (never its password), and its answer to CONNECT: the
        # operator's first question is whether the proxy or the upstream said no.
        log.warning(
            "upstream_unreachable",
            route=route,
            upstream=upstream,
            error=type(exc).__name__,
            egress_proxy=exc.proxy,
            egress_status=exc.status,
        )
        answered = f" (it answered {exc.status})" if exc.status is not None else ""
        return UpstreamUnreachableError(
            f"could not reach the upstream through the egress proxy{answered}"
        )
    log.warning("upstream_unreachable", route=route, upstream=upstream, error=type(exc).__name__)
    return UpstreamUnreachableError("could not reach the upstream")


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
