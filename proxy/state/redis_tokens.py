"""One token per credential for the whole fleet: the TokenStore (tokens.py) over Redis.

Every process keeps a copy of the record and serves requests from it (read() never
waits); Redis holds the fleet's record, sealed (sealing.py), and decides in one script
per step (token_scripts.py) who fetches, whether a commit is stale, and when the fleet
backs off. A commit publishes ``tok <cred-id> <gen>``; the fleet's listener hands that to
:meth:`RedisTokenStore.hint` so the others adopt the token at once; lost, it only waits
for their next lock().

Generations: the manager's ``generation`` is this copy's (it grows with every token this
process commits or adopts); the fleet's generation fences commits in Redis and is kept
apart, so a token committed here while Redis was away never collides with the fleet's.

Times in Redis are the server's: a reply carries the server's ``now``, and a stored time
becomes ``now()`` at the reply plus its distance from that ``now``. No two machines'
clocks are compared.

While Redis is away (StateUnavailableError, within the link's bound, or at once while its
breaker is open) the cached token serves; lock() is a single flight in this process,
commit() and fail() are kept here, and the token-request window is this process's share
of ``token_rate``. A token committed here meanwhile is replaced by the fleet's newer one,
or written to Redis by the next fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import replace
from typing import Any, Final

from ..config import AuthConfig
from .fleet import Fleet
from .redis_link import StateUnavailableError
from .sealing import Sealer
from .token_codec import Reply, ServerTime, TokenCodec, ms, parse, until
from .token_copy import FleetCopy
from .token_scripts import SCRIPTS
from .tokens import (
    ACQUIRED,
    SETTLED,
    LockOutcome,
    LockResult,
    RefreshToken,
    RequestWindow,
    Token,
    TokenRecord,
)

# Added to a token request's timeouts for the lock's TTL: the lock outlives the request.
LOCK_MARGIN: Final = 5.0
_HELD_HERE: Final = LockResult(LockOutcome.HELD, float("inf"))
_LOCAL: Final = -1  # the lock held is this process's alone: Redis was away


class RedisTokenStore:
    """The TokenStore of one credential for every process that shares ``fleet``'s Redis.

    Counters (plain ints, for metrics): ``fetched`` tokens this process committed to the
    fleet, ``adopted`` tokens another process fetched, ``waited`` HELD answers, ``stale``
    and ``lock_taken`` outcomes Redis refused, ``backoff`` locks the fleet's backoff
    answered, ``seal_failures`` values that did not open, ``local`` locks taken in this
    process alone while Redis was away."""

    __slots__ = (
        "_asking",
        "_auth",
        "_codec",
        "_copy",
        "_extender",
        "_fleet",
        "_held",
        "_keys",
        "_owner",
        "_rate_count",
        "_rate_key",
        "_reader",
        "_ttl_ms",
        "_window",
        "backoff",
        "cred_id",
        "fetched",
        "local",
        "lock_taken",
        "stale",
        "waited",
    )

    def __init__(self, fleet: Fleet, auth: AuthConfig, sealer: Sealer) -> None:
        self.cred_id = sealer.cred_id
        self._fleet = fleet
        self._auth = auth
        token_key = fleet.key("tok", self.cred_id)
        self._keys = (token_key, f"{token_key}:lock", f"{token_key}:fail")
        self._rate_key = fleet.key("tokrate", self.cred_id)
        # Per store, not per process: two auth tables on one credential hold locks apart.
        self._owner = f"{fleet.owner}/{os.urandom(4).hex()}"
        self._ttl_ms = ms(auth.timeout.connect + auth.timeout.read + LOCK_MARGIN)
        self._codec = TokenCodec(sealer)
        self._copy = FleetCopy(self._codec, self._owner)
        # None: not held; _LOCAL: held here alone; else the fleet generation to fence with.
        self._held: int | None = None
        self._asking = False  # a lock() of ours is on its way to Redis
        self._window: tuple[int, RequestWindow] | None = None  # our share of token_rate
        self._rate_count = 0
        self._extender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self.fetched = self.waited = self.stale = self.lock_taken = self.backoff = 0
        self.local = 0

    @property
    def adopted(self) -> int:
        return self._copy.adopted

    @property
    def seal_failures(self) -> int:
        return self._codec.seal_failures

    # -- TokenStore ----------------------------------------------------------------------

    def now(self) -> float:
        return self._fleet.clock.monotonic()

    def read(self) -> TokenRecord:
        return self._copy.record

    async def lock(self, generation: int) -> LockResult:
        copy = self._copy
        if copy.record.generation != generation:
            return SETTLED
        if self._held is not None or self._asking:
            return _HELD_HERE
        self._asking = True
        try:
            return await self._lock()
        finally:
            self._asking = False

    async def _lock(self) -> LockResult:
        copy = self._copy
        seen = copy.id
        for _ in range(3):
            try:
                reply = await self._run("lock", self._keys, (self._owner, self._ttl_ms, seen or ""))
            except StateUnavailableError:
                self._held = _LOCAL
                self.local += 1
                return ACQUIRED
            stored, at = reply.stored, self._at(reply)
            if reply.outcome == "fresh":
                token = self._codec.token(stored, at)
                if token is not None:
                    copy.adopt(stored, token, at, reply.n)
                    return SETTLED
                # It does not open here: passed over, so the next answer is to fetch.
                seen = copy.id = stored.id
            elif reply.outcome == "backoff":
                self.backoff += 1
                copy.back_off(stored, at.local(reply.now + reply.n))
                return SETTLED
            elif reply.outcome == "held":
                self.waited += 1
                return LockResult(LockOutcome.HELD, reply.n / 1000)
            else:
                self._held = reply.n
                copy.acquired(stored, at)
                self._extender = asyncio.get_running_loop().create_task(self._extend())
                return ACQUIRED
        return LockResult(LockOutcome.HELD, 0.0)  # commits keep racing ahead: ask again

    async def acquire_request(self) -> float:
        rate = self._auth.token_rate
        if rate is None:
            return 0.0
        self._rate_count += 1
        member = f"{self._owner}/{self._rate_count}"
        try:
            raw = await self._call(
                "rate", (self._rate_key,), (rate.rate, ms(rate.per) * 1000, member)
            )
        except StateUnavailableError:
            share = max(1, rate.rate // self._fleet.share())
            if self._window is None or self._window[0] != share:
                self._window = (share, RequestWindow(share, rate.per))
            return self._window[1].acquire(self.now())
        return 0.0 if int(raw[0]) == 1 else int(raw[1]) / 1_000_000

    async def commit(
        self, token: Token, refresh: RefreshToken | None, generation: int
    ) -> TokenRecord | None:
        self._stop_extending()
        fence, wall = self._held, self._fleet.wall()
        reply = None
        if fence is not None and fence != _LOCAL:
            now, commit_id = self.now(), os.urandom(8).hex()
            sealed = self._codec.seal("access", token.value)
            sealed_refresh = "" if refresh is None else self._codec.seal("refresh", refresh.value)
            args = (
                self._owner,
                fence,
                commit_id,
                sealed,
                ms(token.obtained_at - now),
                ms(token.expires_at - now),
                ms(token.refresh_at - now),
                ms(token.usable_until - now),
                sealed_refresh,
                until(refresh, now),
                wall,
                self._fleet.channel,
                self.cred_id,
            )
            with contextlib.suppress(StateUnavailableError):
                reply = await self._run("commit", self._keys, args)
        self._held = None  # only now: a commit cancelled on its way leaves it to release()
        if reply is not None and reply.outcome == "ok":
            self.fetched += 1
            self._codec.remember("access", sealed, token.value)
            if refresh is not None:
                self._codec.remember("refresh", sealed_refresh, refresh.value)
            return self._copy.committed(token, refresh, (commit_id, reply.n), wall)
        if reply is not None and reply.outcome == "stale":
            self.stale += 1
            at = self._at(reply)
            theirs = self._copy.usable(reply.stored, at, self.now())
            if theirs is not None:
                self._copy.adopt(reply.stored, theirs, at, 0)
                return None  # a newer token was committed meanwhile: it wins
        elif reply is not None:
            self.lock_taken += 1
        # Redis away, or the fleet has no newer token yet: ours serves this process.
        return self._copy.commit_here(token, refresh, generation, wall)

    async def fail(
        self,
        reason: str,
        *,
        rejected: bool,
        delay: float,
        spent: str | None,
        issued: bool = False,
        refresh: RefreshToken | None = None,
    ) -> TokenRecord:
        self._stop_extending()
        copy, fence = self._copy, self._held
        here = copy.failed(
            reason,
            rejected=rejected,
            retry_at=self.now() + delay,
            spent=spent,
            issued=issued,
            refresh=refresh,
            wall=self._fleet.wall(),
        )
        reply = None
        if fence is not None and fence != _LOCAL:
            args = (
                self._owner,
                fence,
                reason,
                int(rejected),
                max(0, ms(delay)),
                self._codec.sealed_spent(spent),
                int(issued),
                "" if here.refresh is None else self._codec.seal("refresh", here.refresh.value),
                until(here.refresh, self.now()),
                here.last_fetch,
            )
            with contextlib.suppress(StateUnavailableError):
                reply = await self._run("fail", self._keys, args)
        self._held = None  # only now: a fail() cancelled on its way leaves it to release()
        if reply is not None and reply.outcome == "stale":
            self.stale += 1
            at = self._at(reply)
            theirs = copy.usable(reply.stored, at, self.now())
            if theirs is not None:
                copy.adopt(reply.stored, theirs, at, 0)
                return copy.record
        elif reply is not None and reply.outcome == "lock-taken":
            self.lock_taken += 1  # the fleet never hears of it: we back off alone
        elif reply is not None:
            stored = reply.stored
            here = replace(here, failures=stored.failures, rejections=stored.rejections)
        copy.record = here
        return here

    async def release(self, *, spent: str | None) -> None:
        self._stop_extending()
        fence = self._held
        if fence is None:
            return
        self._copy.drop_spent(spent)
        if fence != _LOCAL:
            with contextlib.suppress(StateUnavailableError):
                spent_there = self._codec.sealed_spent(spent)
                await self._call("release", self._keys[:2], (self._owner, spent_there))
        self._held = None

    # -- hints and background work -------------------------------------------------------

    def hint(self, generation: int) -> None:
        """The fleet's listener saw ``tok <cred-id> <generation>``: read the record once,
        in the background, and adopt its token if it is newer than ours."""
        copy = self._copy
        if generation == copy.gen and not copy.local_only:
            return  # ours: our own commit's message, or one we adopted
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_fleet())

    async def close(self) -> None:
        """Stop this store's background work (a lock's extension, a hinted read)."""
        self._stop_extending()
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read_fleet(self) -> None:
        try:
            reply = await self._run("read", self._keys[::2], ())
        except StateUnavailableError:
            return  # the next lock() asks again
        copy, stored, at = self._copy, reply.stored, self._at(reply)
        # Only a later commit: a reply overtaken by our own commit's must not undo it.
        if stored.id is None or (stored.gen <= copy.gen and copy.id is not None):
            return
        theirs = copy.usable(stored, at, self.now())
        if theirs is None:
            return
        ours = copy.record.token
        if copy.local_only and ours is not None and ours.obtained_at >= theirs.obtained_at:
            return  # ours is newer: the next fetch commits it
        copy.adopt(stored, theirs, at, reply.n)

    async def _extend(self) -> None:
        """Keep our lock while the fetch runs: at half its TTL, as long as it is ours."""
        while True:
            await self._fleet.clock.sleep(self._ttl_ms / 2000)
            try:
                kept = await self._call("extend", self._keys[1:2], (self._owner, self._ttl_ms))
            except StateUnavailableError:
                continue
            if int(kept) != 1:
                return  # lost: the commit will say so

    def _stop_extending(self) -> None:
        extender, self._extender = self._extender, None
        if extender is not None:
            extender.cancel()

    async def _run(self, name: str, keys: tuple[str, ...], args: tuple[object, ...]) -> Reply:
        return parse(await self._call(name, keys, args))

    async def _call(self, name: str, keys: tuple[str, ...], args: tuple[object, ...]) -> Any:
        script = SCRIPTS[name]
        return await self._fleet.link.call(lambda r: script.run(r, keys, args), f"token_{name}")

    def _at(self, reply: Reply) -> ServerTime:
        return ServerTime(reply.now, self.now())
