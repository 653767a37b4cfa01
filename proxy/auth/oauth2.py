"""OAuth2 token requests: client_credentials (Cognito, Keycloak service accounts), password
(Keycloak customer users) and refresh_token, form-encoded as RFC 6749 and both vendors document.
"""

from __future__ import annotations

import base64
import time
from typing import Any
from urllib.parse import quote_plus

from ..config import ClientCredentialsAuth, PasswordAuth
from ..config.model import OAUTH2_RESERVED_PARAMS
from . import jwt
from .base import Grant, TokenEndpoint, TokenEndpointError


class OAuth2Scheme:
    """Builds the grant's form once; each fetch is one request."""

    __slots__ = (
        "_basic",
        "_client",
        "_default_lifetime",
        "_endpoint",
        "_extra",
        "_primary",
        "_scope",
    )

    def __init__(self, auth: ClientCredentialsAuth | PasswordAuth, endpoint: TokenEndpoint) -> None:
        self._endpoint = endpoint
        self._default_lifetime = auth.default_lifetime
        secret = auth.client_secret.reveal() if auth.client_secret is not None else None
        client_id = auth.client_id
        # Client authentication: form fields (client_secret_post, what Travtus documents)
        # or HTTP Basic with form-encoded id and secret (RFC 6749 2.3.1).
        self._basic: dict[str, str] | None = None
        self._client: dict[str, str] = {"client_id": client_id}
        if auth.client_auth == "basic":
            pair = f"{quote_plus(client_id)}:{quote_plus(secret or '')}"
            self._basic = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
            self._client = {}
        elif secret is not None:
            self._client["client_secret"] = secret
        primary: dict[str, str] = {"grant_type": auth.type, **self._client}
        if isinstance(auth, PasswordAuth):
            primary["username"] = auth.username
            primary["password"] = auth.password.reveal()
        # The scope goes with the refresh_token grant too (RFC 6749 6 makes it optional
        # there): some issuers re-scope a refresh that omits it.
        self._scope: dict[str, str] = {"scope": auth.scope} if auth.scope else {}
        primary.update(self._scope)
        # Extra fields only add: the loader refuses reserved names, and should one slip
        # through it is dropped rather than allowed to replace a field set above.
        self._extra = {k: v for k, v in auth.params.items() if k not in OAUTH2_RESERVED_PARAMS}
        self._primary = {**primary, **self._extra}

    async def fetch(self, refresh_token: str | None) -> Grant:
        form = self._primary
        if refresh_token is not None:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                **self._client,
                **self._scope,
                **self._extra,
            }
        sent = time.time()
        body = await self._endpoint.post(form=form, headers=self._basic)
        return parse_token_response(body, form["grant_type"], sent, self._default_lifetime)


def parse_token_response(
    body: dict[str, Any], grant_type: str, sent: float, default_lifetime: float
) -> Grant:
    """RFC 6749 5.1 fields, with Keycloak's refresh_expires_in; lifetimes from ``sent``."""
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenEndpointError(
            "invalid_response", rejected=True, description="no access_token in the answer"
        )
    token_type = body.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenEndpointError(
            "invalid_response",
            rejected=True,
            description=f"token_type is not Bearer: {str(token_type)[:20]!r}",
        )
    lifetime = _seconds(body.get("expires_in"))
    if lifetime is None:
        exp = jwt.expiry(token)
        lifetime = exp - sent if exp is not None else default_lifetime
    refresh = body.get("refresh_token")
    refresh_lifetime: float | None = None
    if isinstance(refresh, str) and refresh:
        refresh_lifetime = _seconds(body.get("refresh_expires_in"))
        if refresh_lifetime == 0:
            refresh_lifetime = None  # Keycloak: 0 means an offline token with no expiry
        elif refresh_lifetime is None:
            exp = jwt.expiry(refresh)
            refresh_lifetime = exp - sent if exp is not None else None
    else:
        refresh = None
    return Grant(token, lifetime, refresh, refresh_lifetime, grant_type)


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
