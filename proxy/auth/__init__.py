"""Credentials: one module per token scheme, the token manager, and the Protocols they share.

forward.py --token()/invalidate()--> TokenProvider (manager.TokenManager)
                                      |  single flight, proactive refresh, backoff
                                      v
                                  TokenScheme (oauth2.OAuth2Scheme, travelyzer.TravelyzerScheme)
                                      |  one HTTP exchange with the vendor's token endpoint
                                      v
                                  endpoint.post() -> Grant | TokenEndpointError
"""

from .base import Grant, TokenEndpointError, TokenProvider, TokenScheme
from .manager import TokenManager, build_scheme

__all__ = [
    "Grant",
    "TokenEndpointError",
    "TokenManager",
    "TokenProvider",
    "TokenScheme",
    "build_scheme",
]
