"""SandboxSettings: the sandbox's credentials, token lifetimes and rate limits, checked once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Vendor = Literal["travtus", "travis", "travelyzer"]
Kind = Literal["token", "api"]

VENDORS: Final[tuple[Vendor, ...]] = ("travtus", "travis", "travelyzer")

# Knob names shared by the control API and the command line (--token-lifetime NAME=SECONDS).
LIFETIME_NAMES: Final = ("travtus", "travis", "travis_refresh", "travelyzer")

# Injection and latency targets: one per vendor endpoint family.
TARGETS: Final = (
    "travtus_token",
    "travis_token",
    "travelyzer_token",
    "travtus_api",
    "travis_api",
    "travelyzer_api",
)

# Issuers live under the reserved .invalid TLD so a sandbox token can never pass for a real one.
ISSUERS: Final[dict[Vendor, str]] = {
    "travtus": "https://cognito-idp.sandbox.invalid/us-east-2_sandbox",
    "travis": "https://keycloak.sandbox.invalid/realms/travis-road-services",
    "travelyzer": "https://api-clients.travelyzer.sandbox.invalid",
}

# Travelyzer's accepted expiresIn values and the lifetimes they stand for, in seconds.
TRAVELYZER_EXPIRES_IN: Final[dict[str, int]] = {
    "30m": 30 * 60,
    "1h": 60 * 60,
    "24h": 24 * 60 * 60,
    "7d": 7 * 24 * 60 * 60,
    "30d": 30 * 24 * 60 * 60,
}

# Travelyzer counts token requests per apiKey over this sliding window.
TRAVELYZER_WINDOW: Final = 60.0


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    """What a fresh sandbox accepts and how it behaves; ``reset`` returns to these values.

    Lifetimes are seconds and may be fractional (tests use sub-second tokens). Secrets may be
    ``None`` for a public TRAVIS client. ``travelyzer_token_lifetime`` overrides the lifetime
    that ``expiresIn`` asks for. Construction raises ``ValueError`` listing every bad field.
    """

    travtus_client_id: str = "sandbox-travtus-client"
    travtus_client_secret: str = "sandbox-travtus-secret"  # noqa: S105 - sandbox credential
    travtus_token_lifetime: float = 3600.0
    # Vendor-documented limits: bursts of 5,000 on top of 10,000 requests/s sustained.
    travtus_burst: int = 5000
    travtus_rate: float = 10000.0

    travis_client_id: str = "travis-portal"
    travis_client_secret: str | None = "sandbox-travis-secret"  # noqa: S105
    travis_username: str = "driver@example.com"
    travis_password: str = "sandbox-travis-password"  # noqa: S105
    travis_service_client_id: str = "travis-service"
    travis_service_client_secret: str = "sandbox-travis-service-secret"  # noqa: S105
    travis_access_lifetime: float = 300.0
    travis_refresh_lifetime: float = 1800.0

    travelyzer_api_key: str = "sandbox-travelyzer-key"
    travelyzer_api_secret: str = "sandbox-travelyzer-secret"  # noqa: S105
    travelyzer_disabled_keys: tuple[str, ...] = ()
    travelyzer_token_lifetime: float | None = None
    travelyzer_token_per_minute: int = 100

    # The request log keeps this many newest entries, so a load test cannot exhaust memory.
    log_limit: int = 10000

    def __post_init__(self) -> None:
        problems: list[str] = []
        positive = {
            "travtus_token_lifetime": self.travtus_token_lifetime,
            "travtus_rate": self.travtus_rate,
            "travis_access_lifetime": self.travis_access_lifetime,
            "travis_refresh_lifetime": self.travis_refresh_lifetime,
            "travelyzer_token_lifetime": self.travelyzer_token_lifetime,
        }
        for name, value in positive.items():
            if value is not None and not value > 0:
                problems.append(f"{name} = {value!r}: must be a number of seconds above 0")
        at_least_one = {
            "travtus_burst": self.travtus_burst,
            "travelyzer_token_per_minute": self.travelyzer_token_per_minute,
            "log_limit": self.log_limit,
        }
        for name, count in at_least_one.items():
            if not count >= 1:
                problems.append(f"{name} = {count!r}: must be a whole number of at least 1")
        if self.travis_client_id == self.travis_service_client_id:
            problems.append(
                f"travis_service_client_id = {self.travis_service_client_id!r}: "
                "must differ from travis_client_id"
            )
        if problems:
            raise ValueError("invalid sandbox settings: " + "; ".join(problems))

    def lifetimes(self) -> dict[str, float]:
        """Token lifetimes by knob name; ``travelyzer`` only when it overrides ``expiresIn``."""
        lifetimes = {
            "travtus": self.travtus_token_lifetime,
            "travis": self.travis_access_lifetime,
            "travis_refresh": self.travis_refresh_lifetime,
        }
        if self.travelyzer_token_lifetime is not None:
            lifetimes["travelyzer"] = self.travelyzer_token_lifetime
        return lifetimes
