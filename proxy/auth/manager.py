"""The token policy: one token per auth table, never stale, fetched as rarely as the tokens
allow. What it decides lives in a TokenStore (state/tokens.py), so that a fleet can share it.

- Requests read the stored token without awaiting anything while it is usable.
- A background task renews it once ``refresh_at`` of its lifetime has passed, so requests
  keep using the still-valid token meanwhile; the last ``margin`` seconds of a token are
  never used (clock skew, time on the wire).
- Single flight: however many requests of this process find no usable token, one fetch
  runs and they all await it (shielded: a client that hangs up does not cancel it for the
  others); the store's lock makes it one fetch among processes too. While another process
  holds that lock, the still-usable token serves and the lock is asked for again after a
  short poll; requests with no usable token wait for its outcome (at most MAX_FETCH_WAIT).
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
from collections.abc import Callable
from typing import Any, Final

import structlog

from ..config import AuthConfig
from ..errors import TokenUnavailableError
from ..state.tokens import LockOutcome, RefreshToken, Token, TokenRecord, TokenStore
from . import story
from .base import Grant, TokenEndpointError, TokenObserver, TokenScheme
from .timing import backoff, lock_poll, presentable, refresh_token_of, token_of

log = structlog.get_logger("proxy.auth")

_MIN_LIFETIME: Final = 1.0
# Of a burst of upstream 401s, only those at least this far apart replace the token: a
# token the upstream refuses right after it was fetched must not cause a fetch per request.
_REPLACE_INTERVAL: Final = 1.0
# The longest a request waits for a token fetch in flight. A hanging token endpoint would
# otherwise hold every request for the token request's whole read timeout (30 s); past
# this the client gets a quick 503 while the fetch goes on in the background.
MAX_FETCH_WAIT: Final = 5.0


class TokenManager:
    """A TokenProvider over one auth table's token scheme, its state in a TokenStore."""

    __slots__ = (
        "_auth",
        "_inflight",
        "_last_replace",
        "_max_wait",
        "_observer",
        "_poll_at",
        "_random",
        "_refused",
        "_scheme",
        "_secrets",
        "_store",
        "_task",
        "_wake",
        "_watch",
        "name",
    )

    def __init__(
        self,
        auth: AuthConfig,
        scheme: TokenScheme,
        *,
        store: TokenStore,
        jitter: Callable[[], float] = random.random,
        observer: TokenObserver | None = None,
        max_wait: float | None = None,
    ) -> None:
        self.name = auth.name
        self._max_wait = MAX_FETCH_WAIT if max_wait is None else max_wait
        self._auth = auth
        self._scheme = scheme
        self._store = store
        self._random = jitter
        self._observer = observer
        self._inflight: asyncio.Task[Token] | None = None
        self._last_replace = float("-inf")
        # The generation the upstream refused here: this process never sends it again.
        self._refused = 0
        # Store clock: when the background task asks again for a lock held elsewhere.
        self._poll_at = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._secrets = tuple(secret.reveal() for secret in auth.secrets)
        self._watch = story.FetchWatch(
            auth.name, story.endpoint_of(auth.token_url), auth.timeout.read
        )

    # -- the request path --------------------------------------------------------------

    async def token(self) -> str:
        store = self._store
        record = store.read()
        token = record.token
        now = store.now()
        if token is None or now >= token.usable_until or record.generation <= self._refused:
            if self._inflight is not None and self._observer is not None:
                self._observer.token_waited(self.name)
            try:
                async with asyncio.timeout(self._max_wait):
                    token = await self._fetch_shared()
            except TimeoutError:
                # Only our wait ends: the shared fetch is shielded and carries on.
                raise TokenUnavailableError(
                    self.name, "token_endpoint_slow", 1.0, self._explain()
                ) from None
        if self._observer is not None:
            self._observer.token_used(self.name, now - token.obtained_at)
        return token.value

    def invalidate(self, rejected: str) -> None:
        record = self._store.read()
        token = self._current(record)
        if token is None or token.value != rejected:
            return  # already replaced after an earlier refusal of the same token
        now = self._store.now()
        if now - self._last_replace < _REPLACE_INTERVAL:
            log.warning("fresh_token_refused_upstream", auth=self.name)
            if self._observer is not None:
                self._observer.token_refused_fresh(self.name)
            return
        self._last_replace = now
        self._refused = record.generation
        self._wake.set()  # renew now, not at the old refresh point: /-/ready depends on it
        log.info("token_refused_upstream", auth=self.name, age_s=round(now - token.obtained_at, 3))

    @property
    def ready(self) -> bool:
        return self._usable() is not None

    def status(self) -> dict[str, Any]:
        record = self._store.read()
        now = self._store.now()
        return story.status(self._auth.type, record, self._current(record), self._watch, now)

    def _explain(self, record: TokenRecord | None = None) -> str | None:
        """The sentence /-/ready and a client's 503 both carry."""
        return self._watch.explain(record or self._store.read(), self._store.now())

    def _current(self, record: TokenRecord) -> Token | None:
        """The stored token unless the upstream refused it here (usable or not)."""
        return None if record.generation <= self._refused else record.token

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
            record = self._store.read()
            token = self._current(record)
            due = max(
                token.refresh_at if token is not None else 0.0, record.retry_at, self._poll_at
            )
            delay = due - self._store.now()
            if delay > 0:
                self._wake.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            # A failure is recorded and logged by _failed, and the backoff has moved on.
            with contextlib.suppress(TokenUnavailableError):
                await self._fetch_shared()

    # -- fetching ----------------------------------------------------------------------

    async def _fetch_shared(self) -> Token:
        task = self._inflight
        if task is None:
            if self._store.now() < self._store.read().retry_at:
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
        store = self._store
        generation = store.read().generation
        while True:
            lock = await store.lock(generation)
            if lock.outcome is LockOutcome.ACQUIRED:
                break
            if lock.outcome is LockOutcome.SETTLED:
                return self._adopt()
            # Another process fetches: its token will be ours too.
            wait = lock_poll(lock.held_for, self._random)
            token = self._usable()
            if token is not None:
                self._poll_at = store.now() + wait
                return token
            await asyncio.sleep(wait)
            if store.now() < store.read().retry_at:
                raise self._unavailable()  # its fetch failed: back off with it
        # The lock is ours: exactly one of commit(), fail() or release() ends it.
        started = store.now()
        spent: str | None = None  # the refresh token the issuer may have consumed
        try:
            try:
                refresh = presentable(store.read().refresh, store.now())
                kept: RefreshToken | None = None  # still valid if the grant brings none
                answer: tuple[float, Grant] | None = None
                if refresh is not None:
                    # Presented once: unless it provably never left us, it is spent now.
                    spent = refresh.value
                    try:
                        answer = await self._exchange(refresh.value)
                    except TokenEndpointError as exc:
                        if exc.reason != "invalid_grant":
                            if not exc.sent:
                                spent = None
                            raise
                        log.info("refresh_token_refused", auth=self.name, fallback=self._auth.type)
                    else:
                        if answer[1].refresh_token is None:
                            # Issuers that do not rotate (RFC 6749 6) keep it valid.
                            kept, spent = refresh, None
                if answer is None:
                    answer = await self._exchange(None)
                    if spent is None:
                        kept = store.read().refresh
                return await self._settle(*answer, kept, spent, generation, started)
            except TokenEndpointError as exc:
                raise await self._failed(exc, store.now() - started, spent) from exc
            except TokenUnavailableError:
                raise
            except Exception as exc:
                # A bug or an answer nothing anticipated must not end the background refresh
                # or disable the backoff: it is a transient failure like any other.
                log.exception("token_fetch_crashed", auth=self.name)
                failure = TokenEndpointError(
                    "internal_error", rejected=False, description=type(exc).__name__
                )
                raise await self._failed(failure, store.now() - started, spent) from exc
        except TokenUnavailableError:
            raise  # the outcome is written: fail() ended the lock
        except BaseException:
            # Cancelled (close()) before an outcome was written, or while one was (a shared
            # store's fail() waits on the network): what was presented stays spent.
            await store.release(spent=spent)
            raise

    async def _exchange(self, refresh: str | None) -> tuple[float, Grant]:
        """One token request: the time it was sent (store clock) and its usable grant."""
        sent = self._store.now()
        wait = await self._store.acquire_request()
        if wait > 0:
            raise TokenEndpointError(
                "token_rate",
                rejected=False,
                retry_after=wait,
                description="token_rate cap reached",
                sent=False,
            )
        self._watch.start(story.grant_of(self._auth.type, refresh), self._store.now())
        try:
            grant = await self._scheme.fetch(refresh)
        finally:
            self._watch.end()
        if not math.isfinite(grant.lifetime) or grant.lifetime < _MIN_LIFETIME:
            raise TokenEndpointError(
                "expired_on_arrival", rejected=False, description=f"lifetime {grant.lifetime}"
            )
        return sent, grant

    async def _settle(
        self,
        sent: float,
        grant: Grant,
        kept: RefreshToken | None,
        spent: str | None,
        generation: int,
        started: float,
    ) -> Token:
        """Commit ``grant`` (``kept``: the refresh token to keep if it brings none), or fail
        with it when it is unusable on arrival: one outcome for the lock either way."""
        store = self._store
        token = token_of(grant, sent, self._auth.refresh_at)
        # Rotation: the newest refresh token always wins.
        refresh = refresh_token_of(grant, sent) or kept
        previous = self._current(store.read())
        log.info(
            "token_fetched",
            auth=self.name,
            grant=grant.grant_type,
            lifetime_s=round(grant.lifetime, 1),
            duration_ms=round((store.now() - sent) * 1000, 1),
        )
        if self._observer is not None:
            lead = None if previous is None else max(0.0, previous.expires_at - sent)
            self._observer.token_fetched(self.name, store.now() - sent, lead)
        if store.now() >= token.usable_until:
            # The fetch itself took the token's usable life: never committed, never handed
            # out. This process stops sending the token it was to replace too, as it always
            # has: no token until the next fetch (status, /-/ready, has_token say so).
            self._refused = generation
            failure = TokenEndpointError(
                "expired_on_arrival", rejected=False, description="fetch outlasted the token"
            )
            raise await self._failed(
                failure, store.now() - started, spent, issued=True, refresh=refresh
            )
        if await store.commit(token, refresh, generation) is None:
            return self._adopt()  # a newer token was committed meanwhile: it wins
        self._wake.set()
        return token

    def _usable(self) -> Token | None:
        """The stored token, if it may be sent now."""
        token = self._current(self._store.read())
        if token is None or self._store.now() >= token.usable_until:
            return None
        return token

    def _adopt(self) -> Token:
        """The token another fetch committed, if usable; else why there is none."""
        token = self._usable()
        if token is None:
            raise self._unavailable()
        return token

    async def _failed(
        self,
        exc: TokenEndpointError,
        seconds: float,
        spent: str | None,
        *,
        issued: bool = False,
        refresh: RefreshToken | None = None,
    ) -> TokenUnavailableError:
        """Record ``exc`` in the store (see TokenStore.fail for ``issued`` and ``refresh``),
        observe and log it; the error to raise to the fetch's waiters."""
        # After an issued token the counts start over, in the backoff as in the store.
        before = TokenRecord() if issued else self._store.read()
        delay = backoff(self._auth.fetch_retry, exc, before, self._random)
        record = await self._store.fail(
            exc.reason,
            rejected=exc.rejected,
            delay=delay,
            spent=spent,
            issued=issued,
            refresh=refresh,
        )
        description = story.scrub(exc.description, (*self._secrets, record.refresh))
        self._watch.failed(exc.reason, description, ours=exc.status is None)
        if self._observer is not None:
            # A request that never left (token_rate) took no time worth a latency sample.
            self._observer.token_failed(self.name, exc.reason, seconds if exc.sent else 0.0)
        event = log.error if exc.rejected else log.warning
        event(
            "token_fetch_failed",
            auth=self.name,
            reason=exc.reason,
            status=exc.status,
            description=description,
            endpoint=self._watch.endpoint,
            rejected=exc.rejected,
            retry_in_s=round(delay, 2),
            has_token=self.ready,
        )
        self._wake.set()
        return self._unavailable()

    def _unavailable(self) -> TokenUnavailableError:
        record = self._store.read()
        retry_in = max(0.0, record.retry_at - self._store.now())
        return TokenUnavailableError(
            self.name, record.last_outcome or "no_token", retry_in, self._explain(record)
        )
