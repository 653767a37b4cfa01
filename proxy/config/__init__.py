"""routes.toml -> frozen dataclasses.

Loading happens once, at start-up (and on reload): ``${VAR}`` references are resolved from
the environment and ``${file:PATH}`` ones from files (read again on every load), every
table is checked, and *all* problems are reported together in one
ConfigError whose lines name the dotted key (``routes[/travtus].upstream``), the bad value and what
is allowed.
"""

from .checks import trust_store
from .loader import load, loads
from .model import (
    AUTH_TYPES,
    CLIENT_AUTH_MODES,
    TRAVELYZER_EXPIRES_IN,
    AdminAccess,
    AuthCommon,
    AuthConfig,
    ClientConfig,
    ClientCredentialsAuth,
    Config,
    FetchRetry,
    PasswordAuth,
    RateConfig,
    RateLimitConfig,
    RetryConfig,
    RouteConfig,
    Secret,
    ServerConfig,
    StateConfig,
    Timeout,
    TravelyzerAuth,
    Upstream,
)

__all__ = [
    "AUTH_TYPES",
    "CLIENT_AUTH_MODES",
    "TRAVELYZER_EXPIRES_IN",
    "AdminAccess",
    "AuthCommon",
    "AuthConfig",
    "ClientConfig",
    "ClientCredentialsAuth",
    "Config",
    "FetchRetry",
    "PasswordAuth",
    "RateConfig",
    "RateLimitConfig",
    "RetryConfig",
    "RouteConfig",
    "Secret",
    "ServerConfig",
    "StateConfig",
    "Timeout",
    "TravelyzerAuth",
    "Upstream",
    "load",
    "loads",
    "trust_store",
]
