"""Reading token responses: lifetimes from expires_in, expiresAt, the JWT's exp, or a default."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from proxy import config
from proxy.auth import TokenEndpointError
from proxy.auth.jwt import expiry
from proxy.auth.oauth2 import OAuth2Scheme, parse_token_response
from proxy.auth.travelyzer import TravelyzerScheme


def jwt_with(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256'})}.{part(claims)}.c2ln"


def test_expires_in_wins() -> None:
    """expires_in is the lifetime, whatever the JWT says."""
    grant = parse_token_response(
        {"access_token": jwt_with({"exp": 1}), "expires_in": 3600, "token_type": "bearer"},
        "client_credentials",
        time.time(),
        300,
    )
    assert grant.lifetime == 3600


def test_jwt_exp_when_no_expires_in() -> None:
    """Without expires_in the token's own exp claim tells the lifetime."""
    sent = time.time()
    grant = parse_token_response(
        {"access_token": jwt_with({"exp": int(sent) + 120}), "token_type": "Bearer"},
        "client_credentials",
        sent,
        300,
    )
    assert 119 <= grant.lifetime <= 120


def test_default_lifetime_for_opaque_tokens() -> None:
    """An opaque token with no expires_in lives default_lifetime."""
    grant = parse_token_response({"access_token": "opaque"}, "password", time.time(), 42)
    assert grant.lifetime == 42


def test_keycloak_refresh_fields() -> None:
    """refresh_token and refresh_expires_in are kept; 0 means no expiry (offline token)."""
    body = {
        "access_token": "a",
        "expires_in": 300,
        "refresh_token": "r",
        "refresh_expires_in": 1800,
        "token_type": "Bearer",
    }
    grant = parse_token_response(body, "password", time.time(), 300)
    assert (grant.refresh_token, grant.refresh_lifetime) == ("r", 1800)
    offline = parse_token_response({**body, "refresh_expires_in": 0}, "password", 0, 300)
    assert offline.refresh_lifetime is None


@pytest.mark.parametrize(
    "body",
    [
        {"expires_in": 300},
        {"access_token": "", "expires_in": 300},
        {"access_token": "a", "token_type": "mac"},
    ],
)
def test_unusable_answers_are_rejected(body: dict[str, object]) -> None:
    """No token, or a token that is not a bearer token, is an invalid response."""
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(body, "client_credentials", time.time(), 300)
    assert info.value.reason == "invalid_response"
    assert info.value.rejected


@pytest.mark.parametrize(
    "token", ["opaque", "a.b", "a.!!!.c", jwt_with({"sub": "x"}), jwt_with({"exp": "soon"})]
)
def test_expiry_of_non_jwts_is_unknown(token: str) -> None:
    """Anything that is not a JWT with a numeric exp has no known expiry."""
    assert expiry(token) is None


class RecordingEndpoint:
    """A TokenEndpoint that records each request's form or JSON body and answers a token."""

    def __init__(self) -> None:
        self.sent: list[dict[str, str]] = []

    async def post(
        self,
        *,
        form: dict[str, str] | None = None,
        json_body: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        body = form if form is not None else json_body
        assert body is not None
        self.sent.append(body)
        return {"access_token": "a", "token": "a", "expires_in": 300}


async def test_password_grant_asks_for_openid_by_default() -> None:
    """A password table without scope sends scope=openid, as Keycloak requires."""
    cfg = config.loads(
        '[auth.p]\ntype = "password"\ntoken_url = "http://idp/token"\nclient_id = "c"\n'
        'username = "u"\npassword = "p"\n',
        {},
    )
    auth = cfg.auth["p"]
    assert isinstance(auth, config.PasswordAuth)
    endpoint = RecordingEndpoint()
    await OAuth2Scheme(auth, endpoint).fetch(None)
    assert endpoint.sent == [
        {
            "grant_type": "password",
            "client_id": "c",
            "username": "u",
            "password": "p",
            "scope": "openid",
        }
    ]


async def test_params_never_replace_oauth2_fields() -> None:
    """Extra params are added to both grants; reserved names that slip past the loader are
    dropped."""
    auth = config.ClientCredentialsAuth(
        name="x",
        token_url="http://idp/token",
        client_id="real",
        client_secret=config.Secret("s"),
        params={"grant_type": "evil", "client_id": "x", "refresh_token": "r", "audience": "api"},
    )
    endpoint = RecordingEndpoint()
    scheme = OAuth2Scheme(auth, endpoint)
    await scheme.fetch(None)
    await scheme.fetch("refresh-1")
    assert endpoint.sent == [
        {
            "grant_type": "client_credentials",
            "client_id": "real",
            "client_secret": "s",
            "audience": "api",
        },
        {
            "grant_type": "refresh_token",
            "refresh_token": "refresh-1",
            "client_id": "real",
            "client_secret": "s",
            "audience": "api",
        },
    ]


async def test_params_never_replace_travelyzer_fields() -> None:
    """Travelyzer's own body fields win over params of the same name."""
    auth = config.TravelyzerAuth(
        name="t",
        token_url="http://idp/token",
        api_key=config.Secret("k"),
        api_secret=config.Secret("s"),
        params={"apiKey": "evil", "expiresIn": "30d", "tenant": "t1"},
    )
    endpoint = RecordingEndpoint()
    await TravelyzerScheme(auth, endpoint).fetch(None)
    assert endpoint.sent == [{"apiKey": "k", "apiSecret": "s", "expiresIn": "24h", "tenant": "t1"}]
