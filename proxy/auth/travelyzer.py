"""Travelyzer's API-key exchange: JSON {apiKey, apiSecret, expiresIn} -> {token, expiresAt}."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from ..config import TravelyzerAuth
from ..config.model import TRAVELYZER_RESERVED_PARAMS
from . import jwt
from .base import Grant, TokenEndpoint, TokenEndpointError


class TravelyzerScheme:
    """``POST /api-clients/token``; there is no refresh token, a new exchange renews."""

    __slots__ = ("_body", "_default_lifetime", "_endpoint")

    def __init__(self, auth: TravelyzerAuth, endpoint: TokenEndpoint) -> None:
        self._endpoint = endpoint
        self._default_lifetime = auth.default_lifetime
        # expiresIn goes as configured ("24h"): the vendor takes its own duration strings.
        # params only add fields (the loader refuses reserved names; any left are dropped).
        self._body = {
            "apiKey": auth.api_key.reveal(),
            "apiSecret": auth.api_secret.reveal(),
            "expiresIn": auth.expires_in,
            **{k: v for k, v in auth.params.items() if k not in TRAVELYZER_RESERVED_PARAMS},
        }

    async def fetch(self, refresh_token: str | None) -> Grant:
        sent = time.time()
        body = await self._endpoint.post(json_body=self._body)
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise TokenEndpointError(
                "invalid_response", rejected=True, description="no token in the answer"
            )
        expires = body.get("expiresAt")
        lifetime: float | None = None
        if isinstance(expires, str):
            try:
                when = datetime.fromisoformat(expires)
            except ValueError:
                pass
            else:
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)  # the vendor documents UTC
                lifetime = when.timestamp() - sent
        if lifetime is None:
            exp = jwt.expiry(token)
            lifetime = exp - sent if exp is not None else self._default_lifetime
        return Grant(token, lifetime, grant_type="api_key")
