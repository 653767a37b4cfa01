"""Travelyzer: its API-key token exchange and its places (geocoding) API.

    POST /travelyzer-auth/api-clients/token       {"apiKey", "apiSecret", "expiresIn"} -> 201
    GET  /travelyzer/v1/geocoding/forward?query=  200 features echoing the query

Errors are NestJS-shaped ``{"statusCode", "error", "message"}``. Token requests are limited per
apiKey over a sliding 60 s window (100 by default); a refused request says when to come back.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

from . import errors
from .gate import ApiHandler, Gate, TokenHandler, TokenRequest, api_gate, token_gate
from .settings import ISSUERS, TRAVELYZER_EXPIRES_IN
from .state import SandboxState
from .tokens import IssuedToken

TOKEN_PATH: Final = "/travelyzer-auth/api-clients/token"  # noqa: S105 - a path
GEOCODING_PATH: Final = "/travelyzer/v1/geocoding/forward"

TOKEN_GATE: Final = Gate("travelyzer", "travelyzer_token", errors.nest)
API_GATE: Final = Gate("travelyzer", "travelyzer_api", errors.nest, realm="travelyzer")

SCOPE: Final = "places:read"
_EXPIRES_IN_CHOICES: Final = ", ".join(TRAVELYZER_EXPIRES_IN)
_PLACES: Final = ("Main Street", "Market Square", "Central Station")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return errors.json_error(
        {"statusCode": status, "error": errors.phrase(status), "message": message},
        status,
        headers,
    )


def client_id_of(api_key: str) -> str:
    """The clientId Travelyzer reports for ``api_key`` (stable, and not the key itself)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{ISSUERS['travelyzer']}/clients/{api_key}"))


def _body_problems(body: dict[str, Any]) -> list[str]:
    problems = [
        f"{name} must be a non-empty string"
        for name in ("apiKey", "apiSecret")
        if not isinstance(body.get(name), str) or not body[name]
    ]
    if body.get("expiresIn") not in TRAVELYZER_EXPIRES_IN:
        problems.append(f"expiresIn must be one of: {_EXPIRES_IN_CHOICES}")
    return problems


async def _token(request: web.Request, seen: TokenRequest, state: SandboxState) -> web.Response:
    body = seen.fields
    if body is None:
        return _error(400, "Request body must be a JSON object")
    problems = _body_problems(body)
    if problems:
        return _error(400, "; ".join(problems))
    api_key: str = body["apiKey"]
    settings = state.settings
    disabled = api_key in settings.travelyzer_disabled_keys
    now = state.clock()
    # Only keys the vendor knows get a window, so made-up keys cannot grow the sandbox's memory.
    if disabled or api_key == settings.travelyzer_api_key:
        window = state.travelyzer_window(api_key)
        if not window.admit(now):
            wait = window.retry_after(now)
            message = f"Too many token requests: at most {window.limit} per minute per apiKey"
            return _error(429, message, {"Retry-After": str(wait)})
    if disabled:
        return _error(403, "API key is disabled")
    if (
        api_key != settings.travelyzer_api_key
        or body["apiSecret"] != settings.travelyzer_api_secret
    ):
        return _error(401, "Invalid API key or secret")
    lifetime = state.lifetimes.get("travelyzer") or TRAVELYZER_EXPIRES_IN[body["expiresIn"]]
    client_id = client_id_of(api_key)
    token, record = state.tokens.issue(
        "travelyzer", sub=client_id, client_id=client_id, scope=SCOPE, lifetime=lifetime, now=now
    )
    return web.json_response(
        {"token": token, "expiresAt": errors.iso_utc(record.expires_at), "clientId": client_id},
        status=201,
        headers={"Cache-Control": "no-store"},
    )


def _feature(query: str, rank: int) -> dict[str, Any]:
    # Coordinates derived from the query: the same question always gets the same answer.
    digest = hashlib.sha256(f"{query}|{rank}".encode()).digest()
    lon = round(int.from_bytes(digest[:4]) / 2**32 * 360 - 180, 6)
    lat = round(int.from_bytes(digest[4:8]) / 2**32 * 180 - 90, 6)
    return {
        "id": f"place.{digest[:6].hex()}",
        "type": "Feature",
        "place_name": f"{query}, {_PLACES[rank]}",
        "relevance": round(1.0 - rank * 0.1, 2),
        "center": [lon, lat],
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
    }


async def _forward_geocode(
    request: web.Request, token: IssuedToken, state: SandboxState
) -> web.Response:
    query = request.query.get("query", "")
    if not query.strip():
        return _error(400, "query must be a non-empty string")
    features = [_feature(query, rank) for rank in range(len(_PLACES))]
    return web.json_response({"type": "FeatureCollection", "query": query, "features": features})


_TOKEN_ROUTES: Final[dict[str, dict[str, TokenHandler]]] = {TOKEN_PATH: {"POST": _token}}
_API_ROUTES: Final[dict[str, dict[str, ApiHandler]]] = {GEOCODING_PATH: {"GET": _forward_geocode}}


def token_handler() -> Handler:
    """The handler for everything under ``/travelyzer-auth``."""
    return token_gate(TOKEN_GATE, "json", _TOKEN_ROUTES)


def api_handler() -> Handler:
    """The handler for everything under ``/travelyzer``."""
    return api_gate(API_GATE, _API_ROUTES)
