"""What the token schemes, their endpoints and the token manager agree on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Grant:
    """A token endpoint's answer, lifetimes counted from when the request was sent."""

    access_token: str
    lifetime: float
    refresh_token: str | None = None
    refresh_lifetime: float | None = None  # None: unknown, use until the issuer refuses it
    grant_type: str = ""  # the grant that produced it, for logs ("refresh_token", ...)


class TokenEndpointError(Exception):
    """A token request failed.

    ``rejected`` means the issuer refused our credentials or request (invalid_client,
    invalid_grant, 401/403): asking again soon cannot help and may lock the account.
    Otherwise the failure is transient (connection, timeout, 5xx, 429) and is retried with
    backoff, no sooner than ``retry_after`` when the issuer gave one. ``reason`` is a short
    code safe to log and show (the OAuth2 error code, ``http_503``, ``timeout`` ...); nothing
    here ever holds a secret or a token.
    """

    def __init__(
        self,
        reason: str,
        *,
        rejected: bool,
        status: int | None = None,
        retry_after: float | None = None,
        description: str | None = None,
        sent: bool = True,
    ) -> None:
        super().__init__(reason if description is None else f"{reason}: {description}")
        self.reason = reason
        self.rejected = rejected
        self.status = status
        self.retry_after = retry_after
        self.description = description
        self.sent = sent  # False only when the request provably never reached the issuer


class TokenEndpoint(Protocol):
    """One vendor token endpoint: the HTTP client, URL and timeouts are its own."""

    async def post(
        self,
        *,
        form: dict[str, str] | None = None,
        json_body: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """POST the form (or JSON body), never following a redirect; the JSON object of a
        2xx answer, or TokenEndpointError saying whether the failure is transient."""
        ...


class TokenScheme(Protocol):
    """One vendor's token exchange: a single request, no retries, no caching."""

    async def fetch(self, refresh_token: str | None) -> Grant:
        """Obtain a token; with ``refresh_token``, try that grant first where supported."""
        ...


class TokenProvider(Protocol):
    """Hands out a bearer token the issuer still accepts: the forwarding code's only view
    of credentials, and the composition root's, which starts and closes it."""

    name: str

    def start(self) -> None:
        """Fetch a token now and keep one fresh in the background until close(); needs the
        running event loop."""
        ...

    async def close(self) -> None:
        """Stop the background work and any fetch in flight; token() is not called after."""
        ...

    async def token(self) -> str:
        """A valid token, fetching one (single flight) when none is; raises
        TokenUnavailableError when none can be had now."""
        ...

    def invalidate(self, rejected: str) -> None:
        """The upstream refused ``rejected``: stop using it, so the next token() fetches a
        new one (once, however many requests saw the refusal)."""
        ...

    @property
    def ready(self) -> bool:
        """True while a token is held that may still be sent."""
        ...

    def status(self) -> dict[str, Any]:
        """State for /-/ready and /-/status: expiry, last outcome; never the token."""
        ...


class TokenObserver(Protocol):
    """What the token manager reports for metrics; every method must be cheap."""

    def token_fetched(self, auth: str, seconds: float, lead: float | None) -> None:
        """A fetch succeeded in ``seconds``; ``lead``: seconds the old token had left."""
        ...

    def token_failed(self, auth: str, reason: str, seconds: float) -> None: ...

    def token_waited(self, auth: str) -> None:
        """A request waited on a fetch another request had started."""
        ...

    def token_used(self, auth: str, age: float) -> None: ...

    def token_refused_fresh(self, auth: str) -> None:
        """The upstream refused a token within a second of its fetch."""
        ...
