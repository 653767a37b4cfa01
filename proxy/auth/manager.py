"""The token manager: one cached token per auth table, never stale, fetched as rarely as
the tokens allow.

- Requests read the cached token without awaiting anything while it is usable.
- A background task renews it once ``refresh_at`` of its lifetime has passed, so requests
  keep using the still-valid token meanwhile; the last ``margin`` seconds of a token are
  never used (clock skew, time on the wire).
- Single flight: however many requests find no usable token, one fetch runs and they all
  await it (shielded: a client that hangs up does not cancel it for the others).
- Failures back off: transient ones exponentially with jitter (no sooner than the issuer's
  Retry-After), rejected credentials much longer (a circuit breaker: wrong credentials
  must not hammer the vendor or lock the account). While backing off, requests fail fast.
- A refresh token is presented by one fetch only and the newest one is kept; when the
  issuer refuses it, the primary grant takes over in the same fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import structlog

from ..config import AuthConfig, TravelyzerAuth
from ..errors import TokenUnavailableError
from .base import Grant, TokenEndpointError, TokenObserver, TokenScheme
from .oauth2 import OAuth2Scheme
from .travelyzer import TravelyzerScheme
from .window import SlidingWindow

log = structlog.get_logger("proxy.auth")

# Skew margin: a tenth of the lifetime, at most 30 s (a 300 s token stops being sent 30 s
# before it expires, a 24 h token 30 s before, a 5 s test token 0.5 s before).
_MARGIN_SHARE: Final = 0.1
_MAX_MARGIN: Final = 30.0
_MIN_LIFETIME: Final = 1.0
# Of a burst of upstream 401s, only those at least this far apart replace the token: a
# token the upstream refuses right after it was fetched must not cause a fetch per request.
_REPLACE_INTERVAL: Final = 1.0
# The longest an issuer's Retry-After is obeyed for.
MAX_RETRY_AFTER: Final = 900.0
# The longest a request waits for a token fetch in flight. A hanging token endpoint would
# otherwise hold every request for the token request's whole read timeout (30 s); past
# this the client gets a quick 503 while the fetch goes on in the background.
MAX_FETCH_WAIT: Final = 5.0


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    obtained_at: float  # monotonic clock, when the token request was sent
    expires_at: float
    refresh_at: float
    usable_until: float


def build_scheme(auth: AuthConfig) -> TokenScheme:
    if isinstance(auth, TravelyzerAuth):
        return TravelyzerScheme(auth)
    return OAuth2Scheme(auth)


class TokenManager:
    """A TokenProvider over one auth table's token endpoint."""

    __slots__ = (
        "_auth",
        "_clock",
        "_failures",
        "_inflight",
        "_last_fetch",
        "_last_outcome",
        "_last_replace",
        "_max_wait",
        "_observer",
        "_random",
        "_refresh_token",
        "_refresh_until",
        "_rejections",
        "_retry_at",
        "_scheme",
        "_secrets",
        "_session",
        "_task",
        "_token",
        "_wake",
        "_window",
        "name",
    )

    def __init__(
        self,
        auth: AuthConfig,
        session: aiohttp.ClientSession,
        scheme: TokenScheme | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
        observer: TokenObserver | None = None,
        max_wait: float | None = None,
    ) -> None:
        self.name = auth.name
        self._max_wait = MAX_FETCH_WAIT if max_wait is None else max_wait
        self._auth = auth
        self._session = session
        self._scheme = scheme or build_scheme(auth)
        self._clock = clock
        self._random = jitter
        self._observer = observer
        rate = auth.token_rate
        self._window = None if rate is None else SlidingWindow(int(rate.rate), rate.per)
        self._token: Token | None = None
        self._refresh_token: str | None = None
        self._refresh_until: float | None = None
        self._inflight: asyncio.Task[Token] | None = None
        self._retry_at = 0.0
        self._failures = 0
        self._rejections = 0
        self._last_replace = float("-inf")
        self._last_outcome: str | None = None
        self._last_fetch: float | None = None  # wall clock, for status
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._secrets = tuple(secret.reveal() for secret in auth.secrets)

    # -- the request path --------------------------------------------------------------

    async def token(self) -> str:
        token = self._token
        now = self._clock()
        if token is None or now >= token.usable_until:
            if self._inflight is not None and self._observer is not None:
                self._observer.token_waited(self.name)
            try:
                async with asyncio.timeout(self._max_wait):
                    token = await self._fetch_shared()
            except TimeoutError:
                # Only our wait ends: the shared fetch is shielded and carries on.
                raise TokenUnavailableError(self.name, "token_endpoint_slow", 1.0) from None
        if self._observer is not None:
            self._observer.token_used(self.name, now - token.obtained_at)
        return token.value

    def invalidate(self, rejected: str) -> None:
        token = self._token
        if token is None or token.value != rejected:
            return  # already replaced after an earlier refusal of the same token
        now = self._clock()
        if now - self._last_replace < _REPLACE_INTERVAL:
            log.warning("fresh_token_refused_upstream", auth=self.name)
            if self._observer is not None:
                self._observer.token_refused_fresh(self.name)
            return
        self._last_replace = now
        self._token = None
        self._wake.set()  # renew now, not at the old refresh point: /-/ready depends on it
        log.info("token_refused_upstream", auth=self.name, age_s=round(now - token.obtained_at, 3))

    @property
    def ready(self) -> bool:
        token = self._token
        return token is not None and self._clock() < token.usable_until

    def status(self) -> dict[str, Any]:
        token = self._token
        now = self._clock()
        usable = token is not None and now < token.usable_until
        return {
            "type": self._auth.type,
            "ready": usable,
            "expires_in_s": round(token.expires_at - now, 1) if token is not None else None,
            "last_fetch": (
                datetime.fromtimestamp(self._last_fetch, UTC).isoformat(timespec="seconds")
                if self._last_fetch is not None
                else None
            ),
            "last_outcome": self._last_outcome,
            "consecutive_failures": self._failures + self._rejections,
            "retry_in_s": round(self._retry_at - now, 1) if self._retry_at > now else None,
        }

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Fetch now and keep the token fresh in the background until close()."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        for task in (self._task, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, TokenUnavailableError):
                    await task

    async def _run(self) -> None:
        while True:
            token = self._token
            due = max(token.refresh_at if token is not None else 0.0, self._retry_at)
            delay = due - self._clock()
            if delay > 0:
                self._wake.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            # A failure is recorded and logged by _failed, and _retry_at has moved on.
            with contextlib.suppress(TokenUnavailableError):
                await self._fetch_shared()

    # -- fetching ----------------------------------------------------------------------

    async def _fetch_shared(self) -> Token:
        task = self._inflight
        if task is None:
            if self._clock() < self._retry_at:
                raise self._unavailable()
            task = asyncio.get_running_loop().create_task(self._fetch())
            task.add_done_callback(self._fetch_done)
            self._inflight = task
        return await asyncio.shield(task)

    def _fetch_done(self, task: asyncio.Task[Token]) -> None:
        self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved here, so no waiter left means no warning

    async def _fetch(self) -> Token:
        started = self._clock()
        refresh = self._refresh_token
        if self._refresh_until is not None and self._clock() >= self._refresh_until:
            refresh = None
        try:
            if refresh is not None:
                # Presented once: unless it provably never left us, it is spent now.
                self._refresh_token = None
                try:
                    return await self._exchange(refresh)
                except TokenEndpointError as exc:
                    if exc.reason != "invalid_grant":
                        if not exc.sent:
                            self._refresh_token = refresh
                        raise
                    log.info("refresh_token_refused", auth=self.name, fallback=self._auth.type)
            return await self._exchange(None)
        except TokenEndpointError as exc:
            raise self._failed(exc, self._clock() - started) from exc
        except Exception as exc:
            # A bug or an answer nothing anticipated must not end the background refresh
            # or disable the backoff: it is a transient failure like any other.
            log.exception("token_fetch_crashed", auth=self.name)
            failure = TokenEndpointError(
                "internal_error", rejected=False, description=type(exc).__name__
            )
            raise self._failed(failure, self._clock() - started) from exc

    async def _exchange(self, refresh: str | None) -> Token:
        now = self._clock()
        if self._window is not None:
            wait = self._window.wait_time(now)
            if wait > 0:
                raise TokenEndpointError(
                    "token_rate",
                    rejected=False,
                    retry_after=wait,
                    description="token_rate cap reached",
                    sent=False,
                )
            self._window.record(now)
        grant = await self._scheme.fetch(self._session, refresh)
        if not math.isfinite(grant.lifetime) or grant.lifetime < _MIN_LIFETIME:
            raise TokenEndpointError(
                "expired_on_arrival", rejected=False, description=f"lifetime {grant.lifetime}"
            )
        if refresh is not None and grant.refresh_token is None:
            # Issuers that do not rotate (RFC 6749 6) keep the refresh token valid.
            self._refresh_token = refresh
        previous = self._token
        token = self._install(grant, now)
        if self._observer is not None:
            lead = None if previous is None else max(0.0, previous.expires_at - now)
            self._observer.token_fetched(self.name, self._clock() - now, lead)
        if self._clock() >= token.usable_until:
            # The fetch itself took the token's usable life: never hand it out.
            self._token = None
            raise TokenEndpointError(
                "expired_on_arrival", rejected=False, description="fetch outlasted the token"
            )
        return token

    def _install(self, grant: Grant, sent: float) -> Token:
        lifetime = grant.lifetime
        margin = min(lifetime * _MARGIN_SHARE, _MAX_MARGIN)
        token = Token(
            value=grant.access_token,
            obtained_at=sent,
            expires_at=sent + lifetime,
            refresh_at=sent + min(lifetime * self._auth.refresh_at, lifetime - 2 * margin),
            usable_until=sent + lifetime - margin,
        )
        if grant.refresh_token is not None:
            self._refresh_token = grant.refresh_token  # rotation: the newest always wins
            refresh_life = grant.refresh_lifetime
            self._refresh_until = (
                None
                if refresh_life is None or not math.isfinite(refresh_life)
                else sent + refresh_life - min(refresh_life * 0.1, 30.0)
            )
        self._token = token
        self._failures = self._rejections = 0
        self._retry_at = 0.0
        self._last_outcome = "ok"
        self._last_fetch = time.time()
        log.info(
            "token_fetched",
            auth=self.name,
            grant=grant.grant_type,
            lifetime_s=round(lifetime, 1),
            duration_ms=round((self._clock() - sent) * 1000, 1),
        )
        self._wake.set()
        return token

    def _failed(self, exc: TokenEndpointError, seconds: float) -> TokenUnavailableError:
        retry = self._auth.fetch_retry
        if exc.rejected:
            self._rejections += 1
            delay = retry.rejected_backoff * 2 ** min(self._rejections - 1, 4)
        else:
            self._failures += 1
            cap = min(retry.max_backoff, retry.backoff * 2 ** min(self._failures - 1, 30))
            delay = cap / 2 + self._random() * cap / 2  # "equal jitter": spread, never ~0
        if exc.retry_after is not None:
            # Honoured, but not for a year: an absurd Retry-After must not end the service.
            delay = max(delay, min(exc.retry_after, MAX_RETRY_AFTER))
        self._retry_at = self._clock() + delay
        self._last_outcome = exc.reason
        self._last_fetch = time.time()
        if self._observer is not None:
            # A request that never left (token_rate) took no time worth a latency sample.
            self._observer.token_failed(self.name, exc.reason, seconds if exc.sent else 0.0)
        event = log.error if exc.rejected else log.warning
        event(
            "token_fetch_failed",
            auth=self.name,
            reason=exc.reason,
            status=exc.status,
            description=self._scrub(exc.description),
            rejected=exc.rejected,
            retry_in_s=round(delay, 2),
            has_token=self.ready,
        )
        self._wake.set()
        return self._unavailable()

    def _scrub(self, text: str | None) -> str | None:
        """The issuer's own error text, minus any credential it may echo back."""
        if text is None:
            return None
        for secret in (*self._secrets, self._refresh_token):
            if secret and secret in text:
                text = text.replace(secret, "***")
        return text

    def _unavailable(self) -> TokenUnavailableError:
        retry_in = max(0.0, self._retry_at - self._clock())
        return TokenUnavailableError(self.name, self._last_outcome or "no_token", retry_in)
