"""Tokens the sandbox issued: access tokens checked at the APIs, and TRAVIS refresh tokens.

Every token is a real HS256 JWT, but the book of issued tokens is the authority: it holds each
token's precise (float) expiry, revocation and, for refresh tokens, whether it was used. That
lets a 2.5 s token expire after 2.5 s although ``exp`` is a whole second.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Final, Literal

from . import jwt
from .settings import ISSUERS, Vendor

# Descriptions the APIs send in WWW-Authenticate (error_description) and the error body.
MISSING: Final = "Missing bearer token"
EXPIRED: Final = "The access token expired"


@dataclass(slots=True)
class IssuedToken:
    """One access token as the sandbox remembers it."""

    vendor: Vendor
    jti: str
    sub: str
    client_id: str
    scope: str
    expires_at: float
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class BearerFailure:
    """Why an API refuses the request: ``error`` is ``None`` when no bearer token was sent."""

    status: int
    error: str | None
    description: str


@dataclass(frozen=True, slots=True)
class BearerCheck:
    """What the Authorization header(s) of an API request carried, decided at arrival.

    ``outcome`` is the token to accept, or why the request is refused. ``jti``/``sub``/
    ``remaining`` describe any token this sandbox signed (even one that is expired, revoked or
    another vendor's); they are ``None`` for no token or a forged one.
    """

    authorization_count: int
    outcome: IssuedToken | BearerFailure
    jti: str | None = None
    sub: str | None = None
    remaining: float | None = None

    @property
    def expired(self) -> bool:
        return self.remaining is not None and self.remaining <= 0


def _invalid(description: str) -> BearerFailure:
    return BearerFailure(401, "invalid_token", description)


class TokenBook:
    """Signs tokens with this sandbox's key and remembers every access token it issued."""

    __slots__ = ("_key", "_tokens")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._tokens: dict[str, IssuedToken] = {}

    def sign(self, claims: dict[str, Any]) -> str:
        """A JWT over ``claims`` with the sandbox key."""
        return jwt.encode(claims, self._key)

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a JWT this sandbox signed; raises ``jwt.JWTError`` otherwise."""
        return jwt.decode(token, self._key)

    def issue(
        self,
        vendor: Vendor,
        *,
        sub: str,
        client_id: str,
        scope: str,
        lifetime: float,
        now: float,
        extra: dict[str, Any] | None = None,
    ) -> tuple[str, IssuedToken]:
        """A new access token for ``vendor`` valid for ``lifetime`` seconds from ``now``."""
        record = IssuedToken(vendor, str(uuid.uuid4()), sub, client_id, scope, now + lifetime)
        claims: dict[str, Any] = {
            "iss": ISSUERS[vendor],
            "sub": sub,
            "client_id": client_id,
            "iat": int(now),
            # Rounded down: a client reading exp never believes in a second the token lacks.
            "exp": int(now + lifetime),
            "jti": record.jti,
            "scope": scope,
            **(extra or {}),
        }
        self._tokens[record.jti] = record
        return self.sign(claims), record

    def check(self, authorizations: list[str], vendor: Vendor, now: float) -> BearerCheck:
        """Judge an API request's Authorization header values for ``vendor``'s API."""
        count = len(authorizations)
        if count > 1:
            return BearerCheck(count, BearerFailure(400, "invalid_request", _SEVERAL))
        if count == 0:
            return BearerCheck(count, BearerFailure(401, None, MISSING))
        scheme, _, credentials = authorizations[0].strip().partition(" ")
        if scheme.lower() != "bearer":
            # RFC 6750: another scheme counts as no bearer credentials (no error code).
            return BearerCheck(count, BearerFailure(401, None, MISSING))
        try:
            claims = self.verify(credentials.strip())
        except jwt.JWTError as exc:
            return BearerCheck(count, _invalid(_WHY[exc.reason]))
        record = self._tokens.get(str(claims.get("jti")))
        if record is None:
            # Signed by us but not an access token we issued (an ID or refresh token, or one
            # issued before a reset): report what it says, refuse it.
            exp = claims.get("exp")
            return BearerCheck(
                count,
                _invalid("The access token is not recognised"),
                jti=_str_or_none(claims.get("jti")),
                sub=_str_or_none(claims.get("sub")),
                remaining=exp - now if isinstance(exp, int | float) else None,
            )
        remaining = record.expires_at - now
        failure: BearerFailure | None = None
        if record.vendor != vendor or claims.get("iss") != ISSUERS[vendor]:
            failure = _invalid("The access token was not issued for this API")
        elif record.revoked:
            failure = _invalid("The access token has been revoked")
        elif remaining <= 0:
            failure = _invalid(EXPIRED)
        return BearerCheck(
            count, failure or record, jti=record.jti, sub=record.sub, remaining=remaining
        )

    def revoke(self, vendor: Vendor) -> int:
        """Revoke every access token issued so far for ``vendor``; return how many."""
        revoked = 0
        for record in self._tokens.values():
            if record.vendor == vendor and not record.revoked:
                record.revoked = True
                revoked += 1
        return revoked

    def clear(self) -> None:
        """Forget every token: they all become unrecognised."""
        self._tokens.clear()


_SEVERAL: Final = "More than one Authorization header"
_WHY: Final = {
    "malformed": "The access token is malformed",
    "unsupported algorithm": "The access token is not signed with HS256",
    "bad signature": "The access token signature is invalid",
}


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


RefreshState = Literal["active", "used", "revoked"]

NOT_ACTIVE: Final = "Token is not active"
REUSED: Final = "Maximum allowed refresh token reuse exceeded"
WRONG_CLIENT: Final = "Invalid refresh token. Token client and authorized client don't match"


@dataclass(slots=True)
class RefreshGrant:
    """One TRAVIS refresh token: who it is for, until when, and whether it was spent."""

    jti: str
    client_id: str
    sub: str
    username: str
    scope: str
    session_state: str
    expires_at: float
    state: RefreshState = "active"


class RefreshBook:
    """Keycloak refresh tokens with rotation: each one may be redeemed once."""

    __slots__ = ("_book", "_grants")

    def __init__(self, book: TokenBook) -> None:
        self._book = book
        self._grants: dict[str, RefreshGrant] = {}

    def issue(self, grant: RefreshGrant, now: float) -> str:
        """Remember ``grant`` and return its signed refresh token."""
        self._grants[grant.jti] = grant
        return self._book.sign(
            {
                "iss": ISSUERS["travis"],
                "sub": grant.sub,
                "azp": grant.client_id,
                "typ": "Refresh",
                "iat": int(now),
                "exp": int(grant.expires_at),
                "jti": grant.jti,
                "sid": grant.session_state,
                "scope": grant.scope,
            }
        )

    def redeem(self, token: str, client_id: str, now: float) -> RefreshGrant | str:
        """Spend ``token`` for ``client_id``; the grant, or Keycloak's error description."""
        try:
            claims = self._book.verify(token)
        except jwt.JWTError:
            return NOT_ACTIVE
        grant = self._grants.get(str(claims.get("jti")))
        if grant is None:
            return NOT_ACTIVE
        if grant.client_id != client_id:
            return WRONG_CLIENT
        if grant.state == "used":
            return REUSED
        if grant.state == "revoked" or grant.expires_at <= now:
            return NOT_ACTIVE
        # Rotation: the presented token is spent even if the caller fails later.
        grant.state = "used"
        return grant

    def revoke_all(self) -> int:
        """Make every unspent refresh token inactive; return how many."""
        revoked = 0
        for grant in self._grants.values():
            if grant.state == "active":
                grant.state = "revoked"
                revoked += 1
        return revoked

    def clear(self) -> None:
        """Forget every refresh token."""
        self._grants.clear()
