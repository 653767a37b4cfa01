"""A faithful, in-process simulator of the three vendors the proxy fronts.

One aiohttp app on one port serves Travtus (AWS Cognito token endpoint and messages API),
TRAVIS (Keycloak token endpoint and road-events API) and Travelyzer (API-key token exchange and
places API), with real HS256 JWTs, the vendors' error formats and rate limits, a request log
and control knobs (fault injection, latency, token lifetimes, revocation) under ``/-/sandbox/``.
It serves the proxy's tests, ``make demo`` and load tests.

    build_sandbox_app(settings)     the aiohttp app
    SandboxSettings                 credentials, lifetimes, limits (frozen; defaults documented)
    add_arguments(parser), serve()  the ``python -m proxy sandbox`` command
"""

from __future__ import annotations

from .app import build_sandbox_app
from .cli import add_arguments, serve
from .settings import SandboxSettings

__all__ = ["SandboxSettings", "add_arguments", "build_sandbox_app", "serve"]
