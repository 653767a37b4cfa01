"""Credentials: one module per token scheme, the token policy, and the Protocols they share.

forward.py --token()/invalidate()--> TokenProvider (manager.TokenManager)
                                      |  refresh-ahead, grant ladder, backoff, single flight
                                      |  state in a TokenStore (state/tokens.py)
                                      v
                                  TokenScheme (oauth2.OAuth2Scheme, travelyzer.TravelyzerScheme)
                                      |  one token request, built for the vendor
                                      v
                                  TokenEndpoint (endpoint.HttpEndpoint) -> dict | TokenEndpointError
"""

import aiohttp

from ..config import AuthConfig, TravelyzerAuth
from ..state.tokens import TokenStore
from .base import (
    Grant,
    TokenEndpoint,
    TokenEndpointError,
    TokenObserver,
    TokenProvider,
    TokenScheme,
)
from .endpoint import HttpEndpoint
from .manager import TokenManager
from .oauth2 import OAuth2Scheme
from .travelyzer import TravelyzerScheme

__all__ = [
    "Grant",
    "TokenEndpoint",
    "TokenEndpointError",
    "TokenManager",
    "TokenProvider",
    "TokenScheme",
    "build_scheme",
    "token_provider",
]


def build_scheme(auth: AuthConfig, endpoint: TokenEndpoint) -> TokenScheme:
    """The token scheme ``auth``'s type names, asking ``endpoint``."""
    if isinstance(auth, TravelyzerAuth):
        return TravelyzerScheme(auth, endpoint)
    return OAuth2Scheme(auth, endpoint)


def token_provider(
    auth: AuthConfig,
    session: aiohttp.ClientSession,
    *,
    store: TokenStore,
    observer: TokenObserver | None = None,
) -> TokenProvider:
    """The TokenProvider of one auth table, asking its token endpoint over ``session`` (the
    caller's to close) and keeping its state in ``store`` (the composition root's choice:
    State.token_store)."""
    scheme = build_scheme(auth, HttpEndpoint(session, auth.token_url, auth.timeout))
    return TokenManager(auth, scheme, store=store, observer=observer)
