"""Each vendor's error body, so injected faults and refusals look like the real thing.

cognito     {"error": "<oauth code>"}                               Travtus token endpoint
keycloak    {"error": "<oauth code>", "error_description": "..."}   TRAVIS token endpoint
gateway     {"message": "..."}                                      Travtus API (API Gateway)
spring      {"timestamp", "status", "error", "message", "path"}     TRAVIS API
nest        {"statusCode", "error", "message"}                      Travelyzer, both endpoints
"""

from __future__ import annotations

import http
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from aiohttp import web

# The OAuth 2.0 error code a token endpoint uses for a status it was told to answer.
_OAUTH_CODES: Final = {
    400: "invalid_request",
    401: "invalid_client",
    403: "unauthorized_client",
    429: "temporarily_unavailable",
    503: "temporarily_unavailable",
}


class ErrorBody(Protocol):
    """Builds one vendor's JSON error body for ``status`` with a human ``message``."""

    def __call__(self, status: int, message: str, request: web.Request) -> Any: ...


def phrase(status: int) -> str:
    """The reason phrase of ``status`` ("Error" for codes HTTP does not name)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def oauth_code(status: int) -> str:
    """An OAuth error code fitting ``status``, as a token endpoint would send it."""
    if status in _OAUTH_CODES:
        return _OAUTH_CODES[status]
    if status >= 500:
        return "server_error"
    return phrase(status).lower().replace(" ", "_").replace("-", "_")


def iso_utc(timestamp: float) -> str:
    """``timestamp`` as ISO-8601 UTC with milliseconds, rounded down: 2026-11-25T12:00:00.000Z."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def cognito(status: int, message: str, request: web.Request) -> Any:
    return {"error": oauth_code(status)}


def keycloak(status: int, message: str, request: web.Request) -> Any:
    return {"error": oauth_code(status), "error_description": message}


def gateway(status: int, message: str, request: web.Request) -> Any:
    return {"message": message}


def spring(status: int, message: str, request: web.Request) -> Any:
    return {
        "timestamp": iso_utc(datetime.now(UTC).timestamp()),
        "status": status,
        "error": phrase(status),
        "message": message,
        "path": request.path,
    }


def nest(status: int, message: str, request: web.Request) -> Any:
    return {"statusCode": status, "error": phrase(status), "message": message}


def retry_after_value(seconds: float) -> str:
    """A Retry-After header value: whole seconds when whole, else as given."""
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def json_error(body: Any, status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON error response that no cache may keep."""
    return web.json_response(
        body, status=status, headers={"Cache-Control": "no-store", **(headers or {})}
    )
