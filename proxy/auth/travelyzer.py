"""Travelyzer's API-key exchange: JSON {apiKey, apiSecret, expiresIn} -> {token, expiresAt}."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import aiohttp

from ..config import TravelyzerAuth
from ..config.model import TRAVELYZER_RESERVED_PARAMS
from . import endpoint, jwt
from .base import Grant, TokenEndpointError


class TravelyzerScheme:
    """``POST /api-clients/token``; there is no refresh token, a new exchange renews."""

    __slots__ = ("_auth", "_body", "_timeout")

    def __init__(self, auth: TravelyzerAuth) -> None:
        self._auth = auth
        # expiresIn goes as configured ("24h"): the vendor takes its own duration strings.
        # params only add fields (the loader refuses reserved names; any left are dropped).
        self._body = {
            "apiKey": auth.api_key.reveal(),
            "apiSecret": auth.api_secret.reveal(),
            "expiresIn": auth.expires_in,
            **{k: v for k, v in auth.params.items() if k not in TRAVELYZER_RESERVED_PARAMS},
        }
        self._timeout = aiohttp.ClientTimeout(
            total=auth.timeout.connect + auth.timeout.read,
            sock_connect=auth.timeout.connect,
            sock_read=auth.timeout.read,
        )

    async def fetch(self, session: aiohttp.ClientSession, refresh_token: str | None) -> Grant:
        sent = time.time()
        body = await endpoint.post(
            session, self._auth.token_url, limits=self._timeout, json_body=self._body
        )
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
            lifetime = exp - sent if exp is not None else self._auth.default_lifetime
        return Grant(token, lifetime, grant_type="api_key")
