"""build_sandbox_app(): one aiohttp app serving the three simulated vendors and the controls.

    /cognito/...            Travtus token endpoint (AWS Cognito)
    /travtus/...            Travtus messages API
    /keycloak/...           TRAVIS token endpoint (Keycloak realm travis-road-services)
    /travis/...             TRAVIS road-events API
    /travelyzer-auth/...    Travelyzer token endpoint
    /travelyzer/...         Travelyzer places API
    /-/sandbox/...          health, request log, control knobs (never logged)

Each vendor prefix is caught whole, so every request under it is logged, even a 404 or 405.
"""

from __future__ import annotations

import time
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from . import control, travelyzer, travis, travtus
from .settings import SandboxSettings
from .state import STATE, Clock, SandboxState

# Prefix -> the gate answering everything under it. "/travelyzer" cannot swallow
# "/travelyzer-auth": a prefix matches only itself or itself followed by "/".
_PREFIXES: Final[tuple[tuple[str, Handler], ...]] = (
    ("/cognito", travtus.token_handler()),
    ("/travtus", travtus.api_handler()),
    ("/keycloak", travis.token_handler()),
    ("/travis", travis.api_handler()),
    ("/travelyzer-auth", travelyzer.token_handler()),
    ("/travelyzer", travelyzer.api_handler()),
)


def build_sandbox_app(
    settings: SandboxSettings | None = None, *, clock: Clock = time.time
) -> web.Application:
    """The sandbox as an aiohttp app, in the state ``settings`` describe (defaults if None).

    ``clock`` (unix seconds) times tokens, rate limits and the log; tests pass a fake one to
    move time without sleeping. The state holds nothing tied to an event loop, so it is built
    here rather than on startup.
    """
    app = web.Application()
    app[STATE] = SandboxState(settings or SandboxSettings(), clock)
    control.add_routes(app.router)
    for prefix, handler in _PREFIXES:
        app.router.add_route("*", prefix + "{tail:(?:/.*)?}", handler)
    return app
