"""Token stores for driving the TokenManager: a LocalTokenStore that writes down every call
each lock gets, and can answer lock() as if another process held it."""

from __future__ import annotations

import asyncio

from proxy.state.tokens import (
    LocalTokenStore,
    LockOutcome,
    LockResult,
    RefreshToken,
    Token,
    TokenRecord,
)


class RecordingStore:
    """A TokenStore over ``inner`` that logs its calls as "lock:<outcome>", "commit",
    "fail:<reason>" and "release:<spent>". While ``held`` lists seconds, each lock() takes
    the first and answers HELD for that long, as when another process holds the lock. With
    ``stall_fail``, fail() sets ``failing`` and never writes, as a shared store's round
    trip that a close() lands in."""

    def __init__(self, inner: LocalTokenStore, *, stall_fail: bool = False) -> None:
        self.inner = inner
        self.calls: list[str] = []
        self.held: list[float] = []
        self.stall_fail = stall_fail
        self.failing = asyncio.Event()

    def now(self) -> float:
        return self.inner.now()

    def read(self) -> TokenRecord:
        return self.inner.read()

    async def lock(self, generation: int) -> LockResult:
        await asyncio.sleep(0)  # a shared store answers over the network: it yields
        if self.held:
            result = LockResult(LockOutcome.HELD, self.held.pop(0))
        else:
            result = await self.inner.lock(generation)
        self.calls.append(f"lock:{result.outcome.value}")
        return result

    async def acquire_request(self) -> float:
        return await self.inner.acquire_request()

    async def commit(
        self, token: Token, refresh: RefreshToken | None, generation: int
    ) -> TokenRecord | None:
        self.calls.append("commit")
        return await self.inner.commit(token, refresh, generation)

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
        self.calls.append(f"fail:{reason}")
        if self.stall_fail:
            self.failing.set()
            await asyncio.Event().wait()  # cancelled here
        return await self.inner.fail(
            reason, rejected=rejected, delay=delay, spent=spent, issued=issued, refresh=refresh
        )

    async def release(self, *, spent: str | None) -> None:
        self.calls.append(f"release:{spent}")
        await self.inner.release(spent=spent)

    def locks(self) -> list[list[str]]:
        """The calls that ended each ACQUIRED lock, in order; an outcome called without
        one is a list of its own, marked "unlocked"."""
        ends: list[list[str]] = []
        current: list[str] | None = None
        for call in self.calls:
            if call.startswith("lock:"):
                current = [] if call == "lock:acquired" else None
                if current is not None:
                    ends.append(current)
            elif current is not None:
                current.append(call)
            else:
                ends.append([f"unlocked {call}"])
        return ends
