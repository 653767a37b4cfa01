"""The vendor sandbox served for real on 127.0.0.1: token endpoints, APIs, limits and knobs."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from yarl import URL

from proxy.sandbox import SandboxSettings, add_arguments, build_sandbox_app, serve
from proxy.sandbox import jwt as sandbox_jwt
from proxy.sandbox.cli import settings_from_args
from proxy.sandbox.limits import AdmissionWindow, TokenBucket

COGNITO = "/cognito/oauth2/token"
KEYCLOAK = "/keycloak/realms/travis-road-services/protocol/openid-connect/token"
TRAVELYZER_TOKEN = "/travelyzer-auth/api-clients/token"
API = {
    "travtus": "/travtus/messages/",
    "travis": "/travis/api/v1/road-events",
    "travelyzer": "/travelyzer/v1/geocoding/forward?query=Leeds",
}
REALMS = {"travtus": "travtus", "travis": "travis-road-services", "travelyzer": "travelyzer"}

CC_FORM = {
    "grant_type": "client_credentials",
    "client_id": "sandbox-travtus-client",
    "client_secret": "sandbox-travtus-secret",
}
PASSWORD_FORM = {
    "grant_type": "password",
    "client_id": "travis-portal",
    "client_secret": "sandbox-travis-secret",
    "username": "driver@example.com",
    "password": "sandbox-travis-password",
    "scope": "openid",
}
SERVICE_FORM = {
    "grant_type": "client_credentials",
    "client_id": "travis-service",
    "client_secret": "sandbox-travis-service-secret",
    "scope": "openid",
}
TRAVELYZER_BODY = {
    "apiKey": "sandbox-travelyzer-key",
    "apiSecret": "sandbox-travelyzer-secret",
    "expiresIn": "1h",
}


class FakeClock:
    """Unix time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


@dataclass
class Sandbox:
    """A served sandbox and the client that talks to it."""

    client: TestClient[web.Request, web.Application]
    clock: FakeClock

    async def token(self, vendor: str) -> str:
        if vendor == "travtus":
            resp = await self.client.post(COGNITO, data=CC_FORM)
            return str((await resp.json())["access_token"])
        if vendor == "travis":
            resp = await self.client.post(KEYCLOAK, data=PASSWORD_FORM)
            return str((await resp.json())["access_token"])
        resp = await self.client.post(TRAVELYZER_TOKEN, json=TRAVELYZER_BODY)
        return str((await resp.json())["token"])

    async def api(self, vendor: str, token: str | None, **kwargs: Any) -> aiohttp.ClientResponse:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.client.get(API[vendor], headers=headers, **kwargs)

    def raw_url(self, target: str) -> URL:
        """The URL of ``target`` exactly as written: yarl would re-encode a plain string."""
        return URL(str(self.client.make_url("/")).rstrip("/") + target, encoded=True)

    async def control(self, expect: int = 200, **knobs: Any) -> Any:
        resp = await self.client.post("/-/sandbox/control", json=knobs)
        assert resp.status == expect, await resp.text()
        return await resp.json()

    async def log(self) -> list[dict[str, Any]]:
        resp = await self.client.get("/-/sandbox/log")
        return list((await resp.json())["entries"])


SandboxFactory = Callable[..., Awaitable[Sandbox]]


@pytest.fixture
def make_sandbox(aiohttp_client: AiohttpClient) -> SandboxFactory:
    async def factory(settings: SandboxSettings | None = None, real_time: bool = False) -> Sandbox:
        clock = FakeClock()
        app = build_sandbox_app(settings, clock=time.time if real_time else clock)
        client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
        return Sandbox(client, clock)

    return factory


@pytest.fixture
async def sandbox(make_sandbox: SandboxFactory) -> Sandbox:
    return await make_sandbox()


# --- Cognito (Travtus token endpoint) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "headers"),
    [
        (CC_FORM, {}),
        (
            {"grant_type": "client_credentials"},
            {"Authorization": basic("sandbox-travtus-client", "sandbox-travtus-secret")},
        ),
    ],
    ids=["form", "basic"],
)
async def test_cognito_issues_a_jwt_with_form_or_basic_client_auth(
    sandbox: Sandbox, data: dict[str, str], headers: dict[str, str]
) -> None:
    """Cognito answers client_credentials with a JWT, client given in the form or by Basic."""
    resp = await sandbox.client.post(COGNITO, data={**data, "scope": "a/b"}, headers=headers)
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"access_token", "expires_in", "token_type"}
    assert (body["expires_in"], body["token_type"]) == (3600, "Bearer")
    token = claims(body["access_token"])
    assert token["sub"] == token["client_id"] == "sandbox-travtus-client"
    assert token["scope"] == "a/b"
    assert token["exp"] - token["iat"] == 3600
    assert token["iss"].startswith("https://")
    assert token["jti"]


@pytest.mark.parametrize(
    ("data", "headers", "error"),
    [
        ({**CC_FORM, "client_secret": "wrong"}, {}, "invalid_client"),
        ({**CC_FORM, "client_id": "stranger"}, {}, "invalid_client"),
        (
            {"grant_type": "client_credentials"},
            {"Authorization": basic("sandbox-travtus-client", "wrong")},
            "invalid_client",
        ),
        ({"grant_type": "client_credentials"}, {"Authorization": "Basic !!!"}, "invalid_client"),
        ({**CC_FORM, "grant_type": "password"}, {}, "unsupported_grant_type"),
        ({k: v for k, v in CC_FORM.items() if k != "grant_type"}, {}, "invalid_request"),
        ({"grant_type": "client_credentials"}, {}, "invalid_request"),
        (
            {**CC_FORM, "client_id": "other"},
            {"Authorization": basic("sandbox-travtus-client", "sandbox-travtus-secret")},
            "invalid_request",
        ),
        ("grant_type=client_credentials&grant_type=x&client_id=a", {}, "invalid_request"),
        (json.dumps(CC_FORM), {"Content-Type": "application/json"}, "invalid_request"),
    ],
    ids=[
        "bad-secret",
        "unknown-client",
        "bad-basic-secret",
        "garbled-basic",
        "unsupported-grant",
        "no-grant-type",
        "no-client",
        "basic-and-form-disagree",
        "repeated-field",
        "json-body",
    ],
)
async def test_cognito_errors_are_400_with_a_bare_error_code(
    sandbox: Sandbox, data: Any, headers: dict[str, str], error: str
) -> None:
    """Every Cognito token error is 400 {"error": code}, as Cognito sends it."""
    if isinstance(data, str) and "Content-Type" not in headers:
        headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
    resp = await sandbox.client.post(COGNITO, data=data, headers=headers)
    assert (resp.status, await resp.json()) == (400, {"error": error})


# --- Keycloak (TRAVIS token endpoint) ---------------------------------------------------------

KEYCLOAK_FIELDS = {
    "access_token",
    "expires_in",
    "refresh_expires_in",
    "token_type",
    "id_token",
    "not-before-policy",
    "session_state",
    "scope",
}


@pytest.mark.parametrize("auth", ["form", "basic"])
async def test_keycloak_password_grant_returns_keycloak_shaped_tokens(
    sandbox: Sandbox, auth: str
) -> None:
    """The password grant returns access, refresh and ID tokens with Keycloak's fields."""
    data, headers = dict(PASSWORD_FORM), {}
    if auth == "basic":
        data.pop("client_secret")
        data.pop("client_id")
        headers["Authorization"] = basic("travis-portal", "sandbox-travis-secret")
    resp = await sandbox.client.post(KEYCLOAK, data=data, headers=headers)
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == KEYCLOAK_FIELDS | {"refresh_token"}
    assert (body["expires_in"], body["refresh_expires_in"]) == (300, 1800)
    assert (body["token_type"], body["not-before-policy"]) == ("Bearer", 0)
    assert body["scope"].split()[0] == "openid"
    access = claims(body["access_token"])
    assert access["client_id"] == "travis-portal"
    assert claims(body["id_token"])["aud"] == "travis-portal"
    assert claims(body["refresh_token"])["typ"] == "Refresh"


async def test_keycloak_client_credentials_gets_no_refresh_token(sandbox: Sandbox) -> None:
    """A service-account token comes without a refresh token (refresh_expires_in 0)."""
    resp = await sandbox.client.post(KEYCLOAK, data=SERVICE_FORM)
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == KEYCLOAK_FIELDS
    assert body["refresh_expires_in"] == 0
    assert claims(body["access_token"])["client_id"] == "travis-service"
    assert (await sandbox.api("travis", body["access_token"])).status == 200


INVALID_CLIENT = {
    "error": "invalid_client",
    "error_description": "Invalid client or Invalid client credentials",
}


@pytest.mark.parametrize(
    ("data", "status", "body"),
    [
        ({**PASSWORD_FORM, "client_secret": "wrong"}, 401, INVALID_CLIENT),
        ({**PASSWORD_FORM, "client_id": "stranger"}, 401, INVALID_CLIENT),
        ({**SERVICE_FORM, "client_secret": "wrong"}, 401, INVALID_CLIENT),
        (
            {**PASSWORD_FORM, "password": "wrong"},
            401,
            {"error": "invalid_grant", "error_description": "Invalid user credentials"},
        ),
        (
            {**PASSWORD_FORM, "username": "someone@example.com"},
            401,
            {"error": "invalid_grant", "error_description": "Invalid user credentials"},
        ),
        ({**PASSWORD_FORM, "scope": "profile"}, 400, "invalid_scope"),
        ({k: v for k, v in PASSWORD_FORM.items() if k != "scope"}, 400, "invalid_scope"),
        ({**SERVICE_FORM, "scope": "email"}, 400, "invalid_scope"),
        ({**PASSWORD_FORM, "grant_type": "implicit"}, 400, "unsupported_grant_type"),
        ({k: v for k, v in PASSWORD_FORM.items() if k != "grant_type"}, 400, "invalid_request"),
        ({**PASSWORD_FORM, "client_id": "travis-service"}, 401, INVALID_CLIENT),
        (
            {
                **PASSWORD_FORM,
                "client_id": "travis-service",
                "client_secret": "sandbox-travis-service-secret",
            },
            400,
            "unauthorized_client",
        ),
        (
            {
                **SERVICE_FORM,
                "client_id": "travis-portal",
                "client_secret": "sandbox-travis-secret",
            },
            401,
            "unauthorized_client",
        ),
        (
            {
                "grant_type": "refresh_token",
                "refresh_token": "junk",
                **{k: PASSWORD_FORM[k] for k in ("client_id", "client_secret")},
            },
            400,
            {"error": "invalid_grant", "error_description": "Token is not active"},
        ),
    ],
    ids=[
        "bad-client-secret",
        "unknown-client",
        "bad-service-secret",
        "bad-password",
        "unknown-user",
        "scope-without-openid",
        "no-scope",
        "service-scope-without-openid",
        "unsupported-grant",
        "no-grant-type",
        "service-id-with-portal-secret",
        "service-client-password-grant",
        "portal-client-credentials",
        "unknown-refresh-token",
    ],
)
async def test_keycloak_errors(
    sandbox: Sandbox, data: dict[str, str], status: int, body: dict[str, str] | str
) -> None:
    """Keycloak's token errors carry its status, error code and description."""
    resp = await sandbox.client.post(KEYCLOAK, data=data)
    got = await resp.json()
    assert resp.status == status
    if isinstance(body, str):
        assert got["error"] == body
        assert got["error_description"]
    else:
        assert got == body


async def test_keycloak_refresh_tokens_rotate(sandbox: Sandbox) -> None:
    """Each refresh returns a new refresh token that works, and the spent one is refused."""
    first = await (await sandbox.client.post(KEYCLOAK, data=PASSWORD_FORM)).json()
    client = {"client_id": "travis-portal", "client_secret": "sandbox-travis-secret"}
    refresh = {"grant_type": "refresh_token", **client}

    resp = await sandbox.client.post(
        KEYCLOAK, data={**refresh, "refresh_token": first["refresh_token"]}
    )
    second = await resp.json()
    assert resp.status == 200
    assert second["refresh_token"] != first["refresh_token"]
    assert second["session_state"] == first["session_state"]
    assert (await sandbox.api("travis", second["access_token"])).status == 200

    resp = await sandbox.client.post(
        KEYCLOAK, data={**refresh, "refresh_token": second["refresh_token"]}
    )
    assert resp.status == 200

    resp = await sandbox.client.post(
        KEYCLOAK, data={**refresh, "refresh_token": first["refresh_token"]}
    )
    assert (resp.status, await resp.json()) == (
        400,
        {
            "error": "invalid_grant",
            "error_description": "Maximum allowed refresh token reuse exceeded",
        },
    )


@pytest.mark.parametrize("how", ["expired", "revoke_refresh"])
async def test_keycloak_refresh_token_inactive(sandbox: Sandbox, how: str) -> None:
    """An expired or revoked refresh token is "Token is not active"."""
    first = await (await sandbox.client.post(KEYCLOAK, data=PASSWORD_FORM)).json()
    if how == "expired":
        sandbox.clock.advance(1800)
    else:
        await sandbox.control(revoke_refresh=True)
    data = {
        "grant_type": "refresh_token",
        "refresh_token": first["refresh_token"],
        "client_id": "travis-portal",
        "client_secret": "sandbox-travis-secret",
    }
    resp = await sandbox.client.post(KEYCLOAK, data=data)
    assert (resp.status, await resp.json()) == (
        400,
        {"error": "invalid_grant", "error_description": "Token is not active"},
    )


# --- Travelyzer token endpoint ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("expires_in", "seconds"),
    [("30m", 1800), ("1h", 3600), ("24h", 86400), ("7d", 604800), ("30d", 2592000)],
)
async def test_travelyzer_expires_at_matches_expires_in(
    sandbox: Sandbox, expires_in: str, seconds: int
) -> None:
    """expiresAt is ISO-8601 UTC with milliseconds, exactly expiresIn after issue."""
    resp = await sandbox.client.post(
        TRAVELYZER_TOKEN, json={**TRAVELYZER_BODY, "expiresIn": expires_in}
    )
    assert resp.status == 201
    body = await resp.json()
    assert set(body) == {"token", "expiresAt", "clientId"}
    assert body["expiresAt"].endswith(".000Z")
    expires_at = datetime.fromisoformat(body["expiresAt"]).timestamp()
    assert expires_at == sandbox.clock.now + seconds
    token = claims(body["token"])
    assert token["client_id"] == body["clientId"]
    assert token["exp"] == expires_at


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({**TRAVELYZER_BODY, "expiresIn": "2h"}, 400, "expiresIn must be one of"),
        ({k: v for k, v in TRAVELYZER_BODY.items() if k != "expiresIn"}, 400, "expiresIn"),
        ({**TRAVELYZER_BODY, "apiKey": ""}, 400, "apiKey must be"),
        ([TRAVELYZER_BODY], 400, "JSON object"),
        ({**TRAVELYZER_BODY, "apiSecret": "wrong"}, 401, "Invalid API key or secret"),
        ({**TRAVELYZER_BODY, "apiKey": "stranger"}, 401, "Invalid API key or secret"),
    ],
    ids=["bad-expires-in", "no-expires-in", "empty-key", "not-an-object", "bad-secret", "bad-key"],
)
async def test_travelyzer_token_errors(
    sandbox: Sandbox, body: Any, status: int, message: str
) -> None:
    """Travelyzer's token errors are {"statusCode", "error", "message"} with the right status."""
    resp = await sandbox.client.post(TRAVELYZER_TOKEN, json=body)
    got = await resp.json()
    assert resp.status == got["statusCode"] == status
    assert got["error"] == {400: "Bad Request", 401: "Unauthorized"}[status]
    assert message in got["message"]


async def test_travelyzer_disabled_key_is_403(make_sandbox: SandboxFactory) -> None:
    """A key listed as disabled gets 403 Forbidden."""
    sandbox = await make_sandbox(
        SandboxSettings(travelyzer_disabled_keys=("sandbox-travelyzer-key",))
    )
    resp = await sandbox.client.post(TRAVELYZER_TOKEN, json=TRAVELYZER_BODY)
    assert resp.status == 403
    assert await resp.json() == {
        "statusCode": 403,
        "error": "Forbidden",
        "message": "API key is disabled",
    }


async def test_travelyzer_limits_token_requests_per_key_per_minute(sandbox: Sandbox) -> None:
    """The 101st token request within 60 s is 429 with Retry-After; the window then reopens."""
    for _ in range(100):
        resp = await sandbox.client.post(TRAVELYZER_TOKEN, json=TRAVELYZER_BODY)
        assert resp.status == 201
    sandbox.clock.advance(20)
    resp = await sandbox.client.post(TRAVELYZER_TOKEN, json=TRAVELYZER_BODY)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "40"
    body = await resp.json()
    assert (body["statusCode"], body["error"]) == (429, "Too Many Requests")
    sandbox.clock.advance(40)
    resp = await sandbox.client.post(TRAVELYZER_TOKEN, json=TRAVELYZER_BODY)
    assert resp.status == 201


# --- The APIs ---------------------------------------------------------------------------------


async def test_travtus_messages_api(sandbox: Sandbox) -> None:
    """POST queues a message (201) that GET then lists; a non-JSON body is 400."""
    token = await sandbox.token("travtus")
    auth = {"Authorization": f"Bearer {token}"}
    resp = await sandbox.client.post(API["travtus"], json={"text": "hi"}, headers=auth)
    assert resp.status == 201
    posted = await resp.json()
    assert posted["status"] == "queued"
    assert posted["id"]
    assert posted["body"] == {"text": "hi"}
    resp = await sandbox.client.get(API["travtus"], headers=auth)
    assert (resp.status, await resp.json()) == (200, [posted])
    resp = await sandbox.client.post(API["travtus"], data=b"nope", headers=auth)
    assert (resp.status, await resp.json()) == (400, {"message": "Invalid request body"})


async def test_travis_and_travelyzer_apis(sandbox: Sandbox) -> None:
    """Road events list, 404 elsewhere under /travis/, geocoding echoes its query or needs one."""
    travis = await sandbox.token("travis")
    resp = await sandbox.api("travis", travis)
    events = await resp.json()
    assert resp.status == 200
    assert isinstance(events, list)
    assert events
    resp = await sandbox.client.get(
        "/travis/api/v2/other", headers={"Authorization": f"Bearer {travis}"}
    )
    assert resp.status == 404
    assert (await resp.json())["path"] == "/travis/api/v2/other"

    travelyzer = await sandbox.token("travelyzer")
    resp = await sandbox.api("travelyzer", travelyzer)
    places = await resp.json()
    assert resp.status == 200
    assert places["query"] == "Leeds"
    assert all("Leeds" in feature["place_name"] for feature in places["features"])
    resp = await sandbox.client.get(
        "/travelyzer/v1/geocoding/forward", headers={"Authorization": f"Bearer {travelyzer}"}
    )
    assert resp.status == 400
    assert (await resp.json())["statusCode"] == 400


async def test_wrong_method_is_405_with_allow(sandbox: Sandbox) -> None:
    """A known path with the wrong method is 405 naming the allowed ones."""
    resp = await sandbox.client.get(COGNITO)
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"


@pytest.mark.parametrize("vendor", ["travtus", "travis", "travelyzer"])
async def test_missing_token_is_401_with_realm(sandbox: Sandbox, vendor: str) -> None:
    """Without a bearer token every API answers 401 with a bare realm challenge."""
    for headers in ({}, {"Authorization": basic("a", "b")}):
        resp = await sandbox.client.get(API[vendor], headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == f'Bearer realm="{REALMS[vendor]}"'


def _forged(token: str) -> str:
    return sandbox_jwt.encode(claims(token), b"not-the-sandbox-key")


OTHER = {"travtus": "travis", "travis": "travelyzer", "travelyzer": "travtus"}


@pytest.mark.parametrize("vendor", ["travtus", "travis", "travelyzer"])
@pytest.mark.parametrize(
    ("case", "description"),
    [
        ("malformed", "The access token is malformed"),
        ("forged", "The access token signature is invalid"),
        ("other-vendor", "The access token was not issued for this API"),
        ("revoked", "The access token has been revoked"),
        ("expired", "The access token expired"),
        ("id-token", "The access token is not recognised"),
    ],
)
async def test_rejected_tokens_are_401_invalid_token(
    sandbox: Sandbox, vendor: str, case: str, description: str
) -> None:
    """Malformed, forged, foreign, revoked, expired and non-access tokens are 401 invalid_token."""
    own = await sandbox.token(vendor)
    if case == "malformed":
        token = "not-a-jwt"
    elif case == "forged":
        token = _forged(own)
    elif case == "other-vendor":
        token = await sandbox.token(OTHER[vendor])
    elif case == "revoked":
        await sandbox.control(revoke=[vendor])
        token = own
    elif case == "expired":
        sandbox.clock.advance(30 * 24 * 3600)
        token = own
    else:
        resp = await sandbox.client.post(KEYCLOAK, data=PASSWORD_FORM)
        token = (await resp.json())["id_token"]
    resp = await sandbox.api(vendor, token)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == (
        f'Bearer error="invalid_token", error_description="{description}"'
    )
    if case == "revoked":
        assert (await sandbox.api(vendor, await sandbox.token(vendor))).status == 200


async def test_two_authorization_headers_are_400(sandbox: Sandbox) -> None:
    """More than one Authorization header is a malformed request: 400 invalid_request."""
    token = await sandbox.token("travis")
    headers = [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
    resp = await sandbox.client.get(API["travis"], headers=headers)
    assert resp.status == 400
    assert 'error="invalid_request"' in resp.headers["WWW-Authenticate"]
    assert (await sandbox.log())[-1]["authorization_count"] == 2


async def test_fractional_lifetime_expires_on_time(sandbox: Sandbox) -> None:
    """A 2.5 s token is accepted at 2.4 s and refused at 2.5 s, though exp is whole seconds."""
    await sandbox.control(token_lifetime={"travtus": 2.5})
    resp = await sandbox.client.post(COGNITO, data=CC_FORM)
    body = await resp.json()
    assert body["expires_in"] == 2.5
    sandbox.clock.advance(2.4)
    assert (await sandbox.api("travtus", body["access_token"])).status == 200
    sandbox.clock.advance(0.1)
    resp = await sandbox.api("travtus", body["access_token"])
    assert resp.status == 401
    entry = (await sandbox.log())[-1]
    assert entry["token_expired"] is True
    assert entry["token_remaining"] == pytest.approx(0.0, abs=1e-6)


async def test_tokens_expire_in_real_time(make_sandbox: SandboxFactory) -> None:
    """With the real clock a half-second token stops working after half a second."""
    sandbox = await make_sandbox(real_time=True)
    await sandbox.control(token_lifetime={"travis": 0.5})
    token = await sandbox.token("travis")
    assert (await sandbox.api("travis", token)).status == 200
    await asyncio.sleep(0.6)
    resp = await sandbox.api("travis", token)
    assert resp.status == 401
    assert "The access token expired" in resp.headers["WWW-Authenticate"]
    entry = (await sandbox.log())[-1]
    assert entry["token_expired"] is True
    assert entry["token_remaining"] < 0


async def test_travtus_burst_then_sustained_rate(make_sandbox: SandboxFactory) -> None:
    """After the burst, Travtus answers 429 with Retry-After: 1 until the bucket refills."""
    sandbox = await make_sandbox(SandboxSettings(travtus_burst=5, travtus_rate=5))
    token = await sandbox.token("travtus")
    for _ in range(5):
        assert (await sandbox.api("travtus", token)).status == 200
    resp = await sandbox.api("travtus", token)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"
    assert await resp.json() == {"message": "Too Many Requests"}
    sandbox.clock.advance(0.2)  # one request's worth at 5/s
    assert (await sandbox.api("travtus", token)).status == 200
    assert (await sandbox.api("travtus", token)).status == 429


# --- Knobs: injection, latency, lifetimes, reset ----------------------------------------------

INJECTED_BODIES = {
    "travtus_token": {"error": "temporarily_unavailable"},
    "travis_token": {
        "error": "temporarily_unavailable",
        "error_description": "Service Unavailable",
    },
    "travelyzer_token": {
        "statusCode": 503,
        "error": "Service Unavailable",
        "message": "Service Unavailable",
    },
    "travtus_api": {"message": "Service Unavailable"},
    "travelyzer_api": {
        "statusCode": 503,
        "error": "Service Unavailable",
        "message": "Service Unavailable",
    },
}


async def _hit(sandbox: Sandbox, target: str, token: str | None = None) -> aiohttp.ClientResponse:
    vendor, kind = target.split("_")
    if kind == "api":
        return await sandbox.api(vendor, token)
    if vendor == "travtus":
        return await sandbox.client.post(COGNITO, data=CC_FORM)
    if vendor == "travis":
        return await sandbox.client.post(KEYCLOAK, data=PASSWORD_FORM)
    return await sandbox.client.post(TRAVELYZER_TOKEN, json=TRAVELYZER_BODY)


@pytest.mark.parametrize(
    "target",
    [
        "travtus_token",
        "travis_token",
        "travelyzer_token",
        "travtus_api",
        "travis_api",
        "travelyzer_api",
    ],
)
async def test_injected_status_answers_the_next_requests(sandbox: Sandbox, target: str) -> None:
    """An injected 503 answers the next `count` requests in the vendor's format, then it is over."""
    vendor = target.split("_")[0]
    token = await sandbox.token(vendor)
    knobs = await sandbox.control(
        inject=[{"target": target, "status": 503, "count": 2, "retry_after": 1}]
    )
    assert knobs["inject"][0]["count"] == 2
    for _ in range(2):
        resp = await _hit(sandbox, target, token)
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        body = await resp.json()
        if target == "travis_api":
            assert (body["status"], body["error"]) == (503, "Service Unavailable")
        else:
            assert body == INJECTED_BODIES[target]
    ok = 201 if target == "travelyzer_token" else 200
    assert (await _hit(sandbox, target, token)).status == ok
    assert [e["status"] for e in (await sandbox.log())[-3:]] == [503, 503, ok]


async def test_injected_forever_until_cleared_with_custom_body(sandbox: Sandbox) -> None:
    """count -1 injects until clear_inject; a given body is sent as is."""
    await sandbox.control(
        inject=[{"target": "travtus_token", "status": 500, "count": -1, "body": {"x": 1}}]
    )
    for _ in range(3):
        resp = await _hit(sandbox, "travtus_token")
        assert (resp.status, await resp.json()) == (500, {"x": 1})
        assert "Retry-After" not in resp.headers
    knobs = await sandbox.control(clear_inject=True)
    assert knobs["inject"] == []
    assert (await _hit(sandbox, "travtus_token")).status == 200


async def test_injected_status_0_closes_the_connection(sandbox: Sandbox) -> None:
    """Status 0 drops the connection without an answer, and the log says status 0."""
    await sandbox.control(inject=[{"target": "travis_token", "status": 0}])
    # A POST: aiohttp clients retry an idempotent request (GET) once when the server hangs up.
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await sandbox.client.post(KEYCLOAK, data=PASSWORD_FORM)
    entry = (await sandbox.log())[-1]
    assert (entry["kind"], entry["status"]) == ("token", 0)
    assert (await _hit(sandbox, "travis_token")).status == 200


async def test_latency_delays_only_its_target(sandbox: Sandbox) -> None:
    """Latency on one target delays its answers and leaves the others alone."""
    await sandbox.control(latency={"travis_token": 0.2})
    started = time.monotonic()
    assert (await _hit(sandbox, "travis_token")).status == 200
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    assert (await _hit(sandbox, "travtus_token")).status == 200
    assert time.monotonic() - started < 0.2
    knobs = await sandbox.control(latency={"travis_token": 0})
    assert knobs["latency"] == {}


async def test_lifetime_overrides(sandbox: Sandbox) -> None:
    """token_lifetime overrides each vendor's lifetime; null restores the configured one."""
    await sandbox.control(
        token_lifetime={"travtus": 5, "travis": 3, "travis_refresh": 10, "travelyzer": 4}
    )
    travtus = await (await sandbox.client.post(COGNITO, data=CC_FORM)).json()
    assert travtus["expires_in"] == 5
    travis = await (await sandbox.client.post(KEYCLOAK, data=PASSWORD_FORM)).json()
    assert (travis["expires_in"], travis["refresh_expires_in"]) == (3, 10)
    travelyzer = await (await sandbox.client.post(TRAVELYZER_TOKEN, json=TRAVELYZER_BODY)).json()
    assert datetime.fromisoformat(travelyzer["expiresAt"]).timestamp() == sandbox.clock.now + 4
    knobs = await sandbox.control(token_lifetime={"travelyzer": None, "travtus": None})
    assert knobs["token_lifetime"] == {"travtus": 3600, "travis": 3, "travis_refresh": 10}
    travelyzer = await (await sandbox.client.post(TRAVELYZER_TOKEN, json=TRAVELYZER_BODY)).json()
    assert datetime.fromisoformat(travelyzer["expiresAt"]).timestamp() == sandbox.clock.now + 3600


async def test_reset_returns_to_construction_settings(sandbox: Sandbox) -> None:
    """reset clears knobs, log, revocations and issued tokens."""
    token = await sandbox.token("travtus")
    await sandbox.control(
        token_lifetime={"travtus": 5},
        latency={"travis_api": 1},
        inject=[{"target": "travis_api", "status": 502}],
        revoke=["travtus"],
    )
    knobs = await sandbox.control(reset=True)
    assert knobs == {
        "token_lifetime": {"travtus": 3600, "travis": 300, "travis_refresh": 1800},
        "inject": [],
        "latency": {},
        "revoked": {},
        "log_entries": 0,
    }
    resp = await sandbox.api("travtus", token)
    assert "not recognised" in resp.headers["WWW-Authenticate"]
    assert (await sandbox.api("travtus", await sandbox.token("travtus"))).status == 200


@pytest.mark.parametrize(
    ("knobs", "problem"),
    [
        ({"surprise": 1}, "unknown key(s) ['surprise']"),
        ({"token_lifetime": {"travtus": 0}}, "token_lifetime.travtus"),
        ({"token_lifetime": {"nobody": 1}}, "token_lifetime.nobody"),
        ({"inject": [{"target": "nowhere", "status": 503}]}, "inject[0].target"),
        ({"inject": [{"target": "travis_api", "status": 42}]}, "inject[0].status"),
        ({"inject": [{"target": "travis_api", "status": 503, "count": 0}]}, "inject[0].count"),
        ({"inject": [{"target": "travis_api", "status": 503, "wat": 1}]}, "inject[0]: unknown"),
        ({"latency": {"travtus_api": 1, "travis_api": -1}}, "latency.travis_api"),
        ({"revoke": ["acme"]}, "revoke: 'acme'"),
        ({"reset": "yes"}, "reset = 'yes'"),
    ],
)
async def test_bad_control_requests_are_400_and_change_nothing(
    sandbox: Sandbox, knobs: dict[str, Any], problem: str
) -> None:
    """A control request with any problem is refused whole, naming the problem."""
    # A valid change rides along with the bad one and must not be applied either.
    body = await sandbox.control(expect=400, **({"latency": {"travtus_api": 1}} | knobs))
    assert any(problem in p for p in body["problems"]), body
    state = await (await sandbox.client.get("/-/sandbox/control")).json()
    assert state["latency"] == {}
    assert state["inject"] == []


# --- The request log --------------------------------------------------------------------------


async def test_log_records_token_requests_as_received(sandbox: Sandbox) -> None:
    """A token entry holds the raw path, fields, Basic credentials, content type and status."""
    await sandbox.client.delete("/-/sandbox/log")
    headers = {"Authorization": basic("sandbox-travtus-client", "sandbox-travtus-secret")}
    await sandbox.client.session.post(
        sandbox.raw_url(COGNITO + "?x=%7E"),
        data={"grant_type": "client_credentials"},
        headers=headers,
    )
    await sandbox.client.post(TRAVELYZER_TOKEN, json=TRAVELYZER_BODY)
    travtus, travelyzer = await sandbox.log()
    assert travtus["seq"] < travelyzer["seq"]
    assert {
        k: travtus[k] for k in ("vendor", "kind", "method", "path", "status", "grant_type")
    } == {
        "vendor": "travtus",
        "kind": "token",
        "method": "POST",
        "path": "/cognito/oauth2/token?x=%7E",
        "status": 200,
        "grant_type": "client_credentials",
    }
    assert travtus["fields"] == {"grant_type": "client_credentials"}
    assert travtus["basic_auth"] == ["sandbox-travtus-client", "sandbox-travtus-secret"]
    assert travtus["content_type"] == "application/x-www-form-urlencoded"
    assert travtus["time"] == sandbox.clock.now
    assert (travelyzer["grant_type"], travelyzer["basic_auth"]) == (None, None)
    assert travelyzer["fields"] == TRAVELYZER_BODY
    assert (travelyzer["status"], travelyzer["content_type"]) == (201, "application/json")


async def test_log_records_api_requests_with_their_token(sandbox: Sandbox) -> None:
    """An API entry names the token's jti and sub, its remaining life and every header."""
    token = await sandbox.token("travis")
    sandbox.clock.advance(100)
    headers = [("Authorization", f"Bearer {token}"), ("X-Dup", "1"), ("X-Dup", "2")]
    await sandbox.client.session.get(
        sandbox.raw_url("/travis/api/v1/road-events?a=%2F&b"), headers=headers
    )
    entry = (await sandbox.log())[-1]
    assert entry["path"] == "/travis/api/v1/road-events?a=%2F&b"
    assert (entry["vendor"], entry["kind"], entry["status"]) == ("travis", "api", 200)
    assert entry["token_jti"] == claims(token)["jti"]
    assert entry["token_sub"] == claims(token)["sub"]
    assert (entry["token_expired"], entry["token_remaining"]) == (False, 200.0)
    assert entry["authorization_count"] == 1
    assert ["X-Dup", "1"] in entry["headers"]
    assert ["X-Dup", "2"] in entry["headers"]
    assert ["Authorization", f"Bearer {token}"] in entry["headers"]

    await sandbox.api("travis", None)
    entry = (await sandbox.log())[-1]
    assert (entry["token_jti"], entry["token_remaining"], entry["status"]) == (None, None, 401)


async def test_log_can_be_cleared_and_health_answers(sandbox: Sandbox) -> None:
    """DELETE empties the log; control endpoints are never logged; health is 200."""
    await sandbox.token("travtus")
    resp = await sandbox.client.delete("/-/sandbox/log")
    assert await resp.json() == {"cleared": 1}
    resp = await sandbox.client.get("/-/sandbox/health")
    assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    assert await sandbox.log() == []


# --- Command line, settings and the small parts -----------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_token_lifetimes_become_settings() -> None:
    """--token-lifetime NAME=SECONDS sets that lifetime; defaults are host 127.0.0.1 port 9000."""
    args = _args("--token-lifetime", "travis=3", "--token-lifetime", "travelyzer=0.5")
    assert (args.host, args.port) == ("127.0.0.1", 9000)
    settings = settings_from_args(args)
    assert (settings.travis_access_lifetime, settings.travelyzer_token_lifetime) == (3, 0.5)
    for bad in ("nobody=3", "travis", "travis=0", "travis=x"):
        with pytest.raises(SystemExit):
            _args("--token-lifetime", bad)


async def test_serve_prints_its_address_and_serves(capsys: pytest.CaptureFixture[str]) -> None:
    """serve with --port 0 prints one sandbox_started JSON line with a working address."""
    task = asyncio.create_task(serve(_args("--port", "0")))
    line = ""
    for _ in range(200):
        line += capsys.readouterr().out
        if line:
            break
        await asyncio.sleep(0.01)
    event = json.loads(line)
    assert event["event"] == "sandbox_started"
    assert event["address"].startswith("http://127.0.0.1:")
    async with aiohttp.ClientSession() as session:
        async with session.get(event["address"] + "/-/sandbox/health") as resp:
            assert resp.status == 200
        async with session.post(event["token_urls"]["travtus"], data=CC_FORM) as resp:
            assert resp.status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_settings_report_every_bad_value() -> None:
    """SandboxSettings refuses bad values, naming each field."""
    with pytest.raises(ValueError, match="travtus_burst") as info:
        SandboxSettings(travtus_burst=0, travis_access_lifetime=-1)
    assert "travis_access_lifetime" in str(info.value)


def test_jwt_refuses_other_algorithms_and_keys() -> None:
    """A JWT verifies only with its key and only as HS256."""
    token = sandbox_jwt.encode({"sub": "x"}, b"k")
    assert sandbox_jwt.decode(token, b"k") == {"sub": "x"}
    with pytest.raises(sandbox_jwt.JWTError, match="bad signature"):
        sandbox_jwt.decode(token, b"other")
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    with pytest.raises(sandbox_jwt.JWTError, match="unsupported algorithm"):
        sandbox_jwt.decode(header + "." + token.split(".", 1)[1], b"k")


def test_token_bucket_and_sliding_window() -> None:
    """The bucket allows a burst then the rate; the window admits `limit` per window."""
    bucket = TokenBucket(burst=2, rate=1, now=0)
    assert [bucket.take(0), bucket.take(0), bucket.take(0), bucket.take(1)] == [
        True,
        True,
        False,
        True,
    ]
    window = AdmissionWindow(limit=2, window=60)
    assert [window.admit(0), window.admit(10), window.admit(20)] == [True, True, False]
    assert window.retry_after(20) == 40
    assert window.admit(60) is True
