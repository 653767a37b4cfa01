"""Travtus: its AWS Cognito token endpoint and its messages API behind API Gateway.

    POST /cognito/oauth2/token     client_credentials, form-encoded; client by form or Basic
    POST /travtus/messages/        JSON object -> 201 queued message
    GET  /travtus/messages/        200 the messages posted so far

Cognito answers every token error with 400 and a bare ``{"error": code}``. The API is throttled
per client_id by a token bucket (burst, then the sustained rate), like an API Gateway usage plan.
"""

from __future__ import annotations

import json
import uuid
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from . import errors
from .gate import ApiHandler, Gate, TokenHandler, TokenRequest, api_gate, token_gate
from .oauth import ClientAuthError, client_credentials, seconds, token_response
from .state import SandboxState
from .tokens import IssuedToken

TOKEN_PATH: Final = "/cognito/oauth2/token"  # noqa: S105 - a path
MESSAGES_PATH: Final = "/travtus/messages/"

# Cognito grants every scope the app client allows when the request names none.
DEFAULT_SCOPE: Final = "travtus/messages.read travtus/messages.write"

TOKEN_GATE: Final = Gate("travtus", "travtus_token", errors.cognito)
API_GATE: Final = Gate("travtus", "travtus_api", errors.gateway, realm="travtus")


def _error(code: str) -> web.Response:
    return errors.json_error({"error": code}, 400)


async def _token(request: web.Request, seen: TokenRequest, state: SandboxState) -> web.Response:
    fields = seen.fields
    if fields is None or seen.duplicates:
        return _error("invalid_request")
    try:
        client_id, secret = client_credentials(seen, form_encoded_basic=False)
    except ClientAuthError as exc:
        return _error(exc.error)
    grant_type = fields.get("grant_type")
    if not grant_type or not client_id:
        return _error("invalid_request")
    settings = state.settings
    if client_id != settings.travtus_client_id or secret != settings.travtus_client_secret:
        return _error("invalid_client")
    if grant_type != "client_credentials":
        return _error("unsupported_grant_type")
    lifetime = state.lifetimes["travtus"]
    token, _ = state.tokens.issue(
        "travtus",
        sub=client_id,
        client_id=client_id,
        scope=fields.get("scope") or DEFAULT_SCOPE,
        lifetime=lifetime,
        now=state.clock(),
        extra={"token_use": "access", "version": 2},
    )
    return token_response(
        {"access_token": token, "expires_in": seconds(lifetime), "token_type": "Bearer"}
    )


def _throttle(
    request: web.Request, token: IssuedToken, state: SandboxState, now: float
) -> web.Response | None:
    if state.travtus_bucket(token.client_id, now).take(now):
        return None
    return errors.json_error({"message": "Too Many Requests"}, 429, {"Retry-After": "1"})


async def _post_message(
    request: web.Request, token: IssuedToken, state: SandboxState
) -> web.Response:
    try:
        body = json.loads(await request.read())
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return errors.json_error({"message": "Invalid request body"}, 400)
    message = {
        "id": str(uuid.uuid4()),
        "status": "queued",
        "created_at": errors.iso_utc(state.clock()),
        "client_id": token.client_id,
        "body": body,
    }
    state.messages.append(message)
    return web.json_response(message, status=201)


async def _list_messages(
    request: web.Request, token: IssuedToken, state: SandboxState
) -> web.Response:
    return web.json_response(list(state.messages))


_TOKEN_ROUTES: Final[dict[str, dict[str, TokenHandler]]] = {TOKEN_PATH: {"POST": _token}}
_API_ROUTES: Final[dict[str, dict[str, ApiHandler]]] = {
    MESSAGES_PATH: {"GET": _list_messages, "POST": _post_message}
}


def token_handler() -> Handler:
    """The handler for everything under ``/cognito``."""
    return token_gate(TOKEN_GATE, "form", _TOKEN_ROUTES)


def api_handler() -> Handler:
    """The handler for everything under ``/travtus``."""
    return api_gate(API_GATE, _API_ROUTES, throttle=_throttle)
