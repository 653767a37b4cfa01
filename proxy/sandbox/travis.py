"""TRAVIS: its Keycloak realm token endpoint and its road-events API.

    POST /keycloak/realms/travis-road-services/protocol/openid-connect/token
         grant_type=password            the portal client, a user's username and password
         grant_type=client_credentials  the service-account client
         grant_type=refresh_token       rotation: each refresh token may be used once
    GET  /travis/api/v1/road-events     200 a list of events; other paths 404

Errors follow Keycloak: ``{"error", "error_description"}``, 401 for a bad client or user, 400
for the rest. Password and client_credentials requests must ask for the ``openid`` scope.
"""

from __future__ import annotations

import uuid
from typing import Final, Literal

from aiohttp import web
from aiohttp.typedefs import Handler

from . import errors
from .gate import ApiHandler, Gate, TokenHandler, TokenRequest, api_gate, token_gate
from .oauth import ClientAuthError, client_credentials, seconds, token_response
from .settings import ISSUERS, SandboxSettings
from .state import SandboxState
from .tokens import IssuedToken, RefreshGrant

REALM: Final = "travis-road-services"
TOKEN_PATH: Final = f"/keycloak/realms/{REALM}/protocol/openid-connect/token"
ROAD_EVENTS_PATH: Final = "/travis/api/v1/road-events"

TOKEN_GATE: Final = Gate("travis", "travis_token", errors.keycloak)
API_GATE: Final = Gate("travis", "travis_api", errors.spring, realm=REALM)

GRANTS: Final = frozenset({"password", "client_credentials", "refresh_token"})
BAD_CLIENT: Final = "Invalid client or Invalid client credentials"
BAD_USER: Final = "Invalid user credentials"
# Client scopes Keycloak adds by default to every token of the realm.
DEFAULT_SCOPES: Final = ("profile", "email")

ClientRole = Literal["portal", "service"]

ROAD_EVENTS: Final = (
    {"id": "evt-1001", "type": "roadworks", "road": "A1", "severity": "minor"},
    {"id": "evt-1002", "type": "closure", "road": "M25", "severity": "major"},
    {"id": "evt-1003", "type": "incident", "road": "A14", "severity": "moderate"},
)


def _error(status: int, code: str, description: str) -> web.Response:
    return errors.json_error({"error": code, "error_description": description}, status)


def _subject(name: str) -> str:
    # Keycloak subjects are UUIDs; derive them so a user keeps the same one across sandboxes.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{ISSUERS['travis']}/users/{name}"))


def _client_role(
    settings: SandboxSettings, client_id: str | None, secret: str | None
) -> ClientRole | None:
    if client_id == settings.travis_client_id:
        # A public client (no secret configured) is identified by its id alone.
        expected = settings.travis_client_secret
        return "portal" if expected is None or secret == expected else None
    if client_id == settings.travis_service_client_id:
        return "service" if secret == settings.travis_service_client_secret else None
    return None


def _granted_scope(requested: str) -> str:
    names = requested.split()
    return " ".join(dict.fromkeys([*names, *DEFAULT_SCOPES]))


def _issue(
    state: SandboxState,
    *,
    client_id: str,
    username: str,
    scope: str,
    session_state: str,
    with_refresh: bool,
) -> web.Response:
    """Keycloak's token response: access and ID token, and a refresh token if asked."""
    now = state.clock()
    sub = _subject(username)
    access_lifetime = state.lifetimes["travis"]
    refresh_lifetime = state.lifetimes["travis_refresh"]
    access, _ = state.tokens.issue(
        "travis",
        sub=sub,
        client_id=client_id,
        scope=scope,
        lifetime=access_lifetime,
        now=now,
        extra={"typ": "Bearer", "azp": client_id, "sid": session_state},
    )
    id_token = state.tokens.sign(
        {
            "iss": ISSUERS["travis"],
            "sub": sub,
            "aud": client_id,
            "azp": client_id,
            "typ": "ID",
            "iat": int(now),
            "exp": int(now + access_lifetime),
            "jti": str(uuid.uuid4()),
            "sid": session_state,
            "preferred_username": username,
        }
    )
    body: dict[str, object] = {
        "access_token": access,
        "expires_in": seconds(access_lifetime),
        # Keycloak reports 0 when it issues no refresh token.
        "refresh_expires_in": seconds(refresh_lifetime) if with_refresh else 0,
    }
    if with_refresh:
        grant = RefreshGrant(
            str(uuid.uuid4()),
            client_id,
            sub,
            username,
            scope,
            session_state,
            now + refresh_lifetime,
        )
        body["refresh_token"] = state.refresh.issue(grant, now)
    body.update(
        {
            "token_type": "Bearer",
            "id_token": id_token,
            "not-before-policy": 0,
            "session_state": session_state,
            "scope": scope,
        }
    )
    return token_response(body)


def _scope_error(fields: dict[str, object]) -> web.Response | None:
    scope = fields.get("scope")
    if isinstance(scope, str) and "openid" in scope.split():
        return None
    return _error(400, "invalid_scope", f"Invalid scopes: {scope or ''} ('openid' is required)")


async def _token(request: web.Request, seen: TokenRequest, state: SandboxState) -> web.Response:
    fields = seen.fields or {}
    if seen.duplicates:
        return _error(400, "invalid_request", "duplicated parameter")
    grant_type = fields.get("grant_type")
    if not grant_type:
        return _error(400, "invalid_request", "Missing form parameter: grant_type")
    if grant_type not in GRANTS:
        return _error(400, "unsupported_grant_type", "Unsupported grant_type")
    try:
        client_id, secret = client_credentials(seen, form_encoded_basic=True)
    except ClientAuthError as exc:
        return _error(400 if exc.error == "invalid_request" else 401, exc.error, exc.description)
    settings = state.settings
    role = _client_role(settings, client_id, secret)
    if role is None or client_id is None:
        return _error(401, "invalid_client", BAD_CLIENT)

    if grant_type == "password":
        if role != "portal":
            return _error(400, "unauthorized_client", "Client not allowed for direct access grants")
        refused = _scope_error(fields)
        if refused is not None:
            return refused
        username = fields.get("username")
        if not username:
            return _error(400, "invalid_request", "Missing parameter: username")
        if (
            username != settings.travis_username
            or fields.get("password") != settings.travis_password
        ):
            return _error(401, "invalid_grant", BAD_USER)
        return _issue(
            state,
            client_id=client_id,
            username=username,
            scope=_granted_scope(fields["scope"]),
            session_state=str(uuid.uuid4()),
            with_refresh=True,
        )

    if grant_type == "client_credentials":
        if role != "service":
            return _error(
                401, "unauthorized_client", "Client not enabled to retrieve service account"
            )
        refused = _scope_error(fields)
        if refused is not None:
            return refused
        return _issue(
            state,
            client_id=client_id,
            username=f"service-account-{client_id}",
            scope=_granted_scope(fields["scope"]),
            session_state=str(uuid.uuid4()),
            with_refresh=False,
        )

    presented = fields.get("refresh_token")
    if not presented:
        return _error(400, "invalid_request", "Missing parameter: refresh_token")
    grant = state.refresh.redeem(presented, client_id, state.clock())
    if isinstance(grant, str):
        return _error(400, "invalid_grant", grant)
    return _issue(
        state,
        client_id=client_id,
        username=grant.username,
        scope=grant.scope,
        session_state=grant.session_state,
        with_refresh=True,
    )


async def _road_events(
    request: web.Request, token: IssuedToken, state: SandboxState
) -> web.Response:
    return web.json_response(list(ROAD_EVENTS))


_TOKEN_ROUTES: Final[dict[str, dict[str, TokenHandler]]] = {TOKEN_PATH: {"POST": _token}}
_API_ROUTES: Final[dict[str, dict[str, ApiHandler]]] = {ROAD_EVENTS_PATH: {"GET": _road_events}}


def token_handler() -> Handler:
    """The handler for everything under ``/keycloak``."""
    return token_gate(TOKEN_GATE, "form", _TOKEN_ROUTES)


def api_handler() -> Handler:
    """The handler for everything under ``/travis``."""
    return api_gate(API_GATE, _API_ROUTES)
