"""What the two OAuth 2.0 token endpoints (Cognito, Keycloak) share: client authentication
from the form or HTTP Basic, and the shape of their answers."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from aiohttp import web

from .gate import TokenRequest


class ClientAuthError(Exception):
    """The request's client authentication cannot be read; ``error`` is the OAuth code."""

    def __init__(self, error: str, description: str) -> None:
        self.error = error
        self.description = description
        super().__init__(description)


def client_credentials(
    seen: TokenRequest, *, form_encoded_basic: bool
) -> tuple[str | None, str | None]:
    """``(client_id, client_secret)`` from HTTP Basic if sent, else from the form fields.

    RFC 6749 2.3.1 form-encodes the id and secret inside Basic; Keycloak decodes that
    (``form_encoded_basic``), Cognito takes them literally. Raises ``ClientAuthError`` for
    several Authorization headers, a header that is not Basic, or a form ``client_id`` naming
    another client than the header.
    """
    fields = seen.fields or {}
    form_id = fields.get("client_id")
    if len(seen.authorizations) > 1:
        raise ClientAuthError("invalid_request", "More than one Authorization header")
    if seen.authorizations:
        if seen.basic_auth is None:
            raise ClientAuthError("invalid_client", "Authorization header is not valid Basic")
        basic_id, basic_secret = seen.basic_auth
        if form_encoded_basic:
            basic_id, basic_secret = unquote_plus(basic_id), unquote_plus(basic_secret)
        if form_id is not None and form_id != basic_id:
            raise ClientAuthError("invalid_request", "client_id differs from the Basic client")
        return basic_id, basic_secret
    form_secret = fields.get("client_secret")
    return (
        form_id if isinstance(form_id, str) else None,
        form_secret if isinstance(form_secret, str) else None,
    )


def seconds(value: float) -> int | float:
    """A lifetime for ``expires_in``: an integer, unless a test asked for a fraction."""
    return int(value) if float(value).is_integer() else value


def token_response(body: dict[str, Any], status: int = 200) -> web.Response:
    """A token endpoint's success answer: never cached, as RFC 6749 5.1 requires."""
    return web.json_response(
        body, status=status, headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
    )
