"""A token endpoint over HTTP: one POST, its failures sorted into transient and rejected."""

from __future__ import annotations

import json
import os
from typing import Any, Final

import aiohttp
from yarl import URL

from ..config import Timeout
from ..headers import retry_after_seconds
from .base import TokenEndpointError

# An OAuth2 error that asks us to come back later rather than saying we are wrong.
_TRANSIENT_CODES: Final = frozenset({"temporarily_unavailable", "slow_down"})
# The issuer's "error" is kept as the reason only when it is one of these words: the
# reason reaches /-/ready (open to anyone), clients' 503s, /-/status and Redis, and an
# issuer may put anything there (a user name, the password it refused). RFC 6749 5.2
# and RFC 6750 3.1 codes, and the HTTP words some issuers answer with (Travelyzer:
# "Unauthorized"); anything else is told by its status (http_401) and only logged.
_ISSUER_CODES: Final = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
        "slow_down",
        "invalid_token",
        "insufficient_scope",
        "unauthorized",
        "forbidden",
        "bad_request",
        "not_found",
        "too_many_requests",
    }
)
_MAX_DESCRIPTION: Final = 200
MAX_ANSWER: Final = 1024 * 1024


class HttpEndpoint:
    """A TokenEndpoint over an aiohttp session the composition root opened (and closes)."""

    __slots__ = ("_session", "_timeout", "url")

    def __init__(self, session: aiohttp.ClientSession, url: str, timeout: Timeout) -> None:
        self._session = session
        # Parsed once, as aiohttp would parse the string on every request.
        self.url = URL(url)
        self._timeout = aiohttp.ClientTimeout(
            total=timeout.connect + timeout.read,
            sock_connect=timeout.connect,
            sock_read=timeout.read,
        )

    async def post(
        self,
        *,
        form: dict[str, str] | None = None,
        json_body: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """POST and return the JSON object of a 2xx answer; raise TokenEndpointError
        otherwise."""
        try:
            # Never follow a redirect: it would carry our credentials to wherever it points.
            async with self._session.post(
                self.url,
                data=form,
                json=json_body,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout,
            ) as response:
                raw = await _read_bounded(response)
                status = response.status
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        except TimeoutError as exc:
            # Which wait ran out tells an operator where to look (network or issuer).
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                waited = f"no connection within {self._timeout.sock_connect} s"
            else:
                waited = f"no answer within {self._timeout.sock_read} s"
            raise TokenEndpointError("timeout", rejected=False, description=waited) from exc
        except aiohttp.ClientConnectorError as exc:
            raise TokenEndpointError(
                "connection_error", rejected=False, description=_cannot_connect(exc), sent=False
            ) from exc
        except aiohttp.ClientError as exc:
            raise TokenEndpointError(
                "connection_error", rejected=False, description=type(exc).__name__
            ) from exc
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if 200 <= status < 300:
            if not isinstance(body, dict):
                raise TokenEndpointError(
                    "invalid_response",
                    rejected=True,
                    status=status,
                    description="answer is not a JSON object",
                )
            return body
        raise _classify(status, body, retry_after)


def _cannot_connect(exc: aiohttp.ClientConnectorError) -> str:
    """Where the connection went and the system's word for why it failed."""
    cause = exc.os_error
    # A refused connection's strerror is asyncio's "Connect call failed (...)"; the errno's
    # own text is the system's word. Resolver errors (negative codes) keep their strerror.
    if cause.errno is not None and cause.errno > 0:
        why = os.strerror(cause.errno)
    else:
        why = cause.strerror or type(cause).__name__
    host = f"[{exc.host}]" if ":" in exc.host else exc.host
    return f"cannot connect to {host}:{exc.port}: {why}"


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    """The answer's body, refused past MAX_ANSWER: a token answer is a few KB."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > MAX_ANSWER:
            raise TokenEndpointError(
                "invalid_response",
                rejected=True,
                status=response.status,
                description="answer too large",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _classify(status: int, body: Any, retry_after: float | None) -> TokenEndpointError:
    reason = f"http_{status}"
    description = None
    if isinstance(body, dict):
        # OAuth2 {"error": "invalid_client", "error_description": ...};
        # Travelyzer {"statusCode": 401, "error": "Unauthorized", "message": ...}.
        code = body.get("error")
        if isinstance(code, str) and code:
            word = code.strip().lower().replace(" ", "_")
            if word in _ISSUER_CODES:
                reason = word
        text = body.get("error_description", body.get("message"))
        if isinstance(text, str):
            description = text[:_MAX_DESCRIPTION]
    transient = status >= 500 or status in (408, 429) or reason in _TRANSIENT_CODES
    return TokenEndpointError(
        reason,
        rejected=not transient,
        status=status,
        retry_after=retry_after,
        description=description,
    )
