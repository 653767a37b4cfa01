"""What an operator and a client are told about one auth table's token.

``/-/ready``, ``/-/status``, the client's 503 and the log lines all build their words here,
so a token endpoint that hangs reads the same everywhere: "fetching, no answer after 6 s"
while it hangs, "timeout" once the token request gave up. Nothing here ever sees a token.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from yarl import URL

from ..state.tokens import RefreshToken, Token, TokenRecord

log = structlog.get_logger("proxy.auth")

# A token request unanswered this long is logged as slow (once, while it still waits),
# unless half its read timeout is shorter.
SLOW_AFTER: Final = 5.0


def grant_of(kind: str, refresh: str | None) -> str:
    """The grant a fetch asks for, named as its Grant will be (see Grant.grant_type)."""
    if refresh is not None:
        return "refresh_token"
    return "api_key" if kind == "travelyzer" else kind


def endpoint_of(token_url: str) -> str:
    """``host:port`` of a token URL, for log lines and messages (never its path or query:
    some issuers put a tenant or a key there)."""
    url = URL(token_url)
    host = url.host or "?"
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{url.port}"


def scrub(text: str | None, secrets: tuple[str | RefreshToken | None, ...]) -> str | None:
    """The issuer's own error text, minus any credential it may echo back."""
    if text is None:
        return None
    for secret in secrets:
        value = secret.value if isinstance(secret, RefreshToken) else secret
        if value and value in text:
            text = text.replace(value, "***")
    return text


def fetching(endpoint: str, seconds: float) -> str:
    return f"token request to {endpoint} sent {seconds:.1f} s ago, no answer yet"


def failed(endpoint: str, reason: str, detail: str | None, retry_in: float) -> str:
    text = f"last token request to {endpoint} failed: {reason}"
    if detail:
        text += f" ({detail})"
    if retry_in > 0:
        text += f"; next one in {math.ceil(retry_in)} s"
    return text


class FetchWatch:
    """One auth table's token request in flight: logged when it starts, and once more as
    ``token_fetch_slow`` if it outlasts ``slow_after`` (a hanging issuer would otherwise
    leave the log silent for the whole read timeout)."""

    __slots__ = ("_auth", "_detail", "_slow_after", "_timer", "endpoint", "grant", "since")

    def __init__(self, auth: str, endpoint: str, read_timeout: float) -> None:
        self._auth = auth
        self.endpoint = endpoint
        self._slow_after = min(SLOW_AFTER, read_timeout / 2)
        self._timer: asyncio.TimerHandle | None = None
        self.since: float | None = None  # the store clock's time it was sent, while in flight
        self.grant = ""
        # The last failure's reason and the description told with it (ours only).
        self._detail: tuple[str, str | None] = ("", None)

    def start(self, grant: str, now: float) -> None:
        self.since = now
        self.grant = grant
        log.info("token_fetch_started", auth=self._auth, grant=grant, endpoint=self.endpoint)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._slow_after, self._slow)

    def _slow(self) -> None:
        self._timer = None
        log.warning(
            "token_fetch_slow",
            auth=self._auth,
            grant=self.grant,
            endpoint=self.endpoint,
            waited_s=round(self._slow_after, 1),
        )

    def end(self) -> None:
        self.since = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def failed(self, reason: str, description: str | None, ours: bool) -> None:
        """Remember a failure's description for :meth:`explain` if it is in our own words:
        an issuer's text may name a user, and /-/ready and the 503 are for anyone."""
        self._detail = (reason, description if ours else None)

    def explain(self, record: TokenRecord, now: float) -> str | None:
        """The one sentence on why there is no token (or what the last fetch did), or
        None while the last fetch went well and none is in flight."""
        if self.since is not None:
            return fetching(self.endpoint, now - self.since)
        outcome = record.last_outcome
        if outcome is None or outcome == "ok":
            return None
        reason, detail = self._detail
        # A fleet peer's failure is known here by its reason only.
        known = detail if reason == outcome else None
        return failed(self.endpoint, outcome, known, record.retry_at - now)


def _state(usable: bool, watch: FetchWatch, record: TokenRecord) -> str:
    if usable:
        return "ready"
    if watch.since is not None:
        return "fetching"
    return "starting" if record.last_outcome is None else "failing"


def status(
    kind: str,
    record: TokenRecord,
    token: Token | None,
    watch: FetchWatch,
    now: float,
) -> dict[str, Any]:
    """The token state /-/ready and /-/status show: expiry, the fetch in flight and the
    last outcome, in the words a client's 503 carries; never the token."""
    usable = token is not None and now < token.usable_until
    return {
        "type": kind,
        "ready": usable,
        "state": _state(usable, watch, record),
        "expires_in_s": round(token.expires_at - now, 1) if token is not None else None,
        "fetching_for_s": round(now - watch.since, 1) if watch.since is not None else None,
        "endpoint": watch.endpoint,
        "last_fetch": (
            datetime.fromtimestamp(record.last_fetch, UTC).isoformat(timespec="seconds")
            if record.last_fetch is not None
            else None
        ),
        "last_outcome": record.last_outcome,
        "consecutive_failures": record.failures + record.rejections,
        "retry_in_s": round(record.retry_at - now, 1) if record.retry_at > now else None,
        "message": watch.explain(record, now),
    }
