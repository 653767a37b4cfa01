"""HS256 JSON Web Tokens with the standard library: enough for a sandbox to sign and check.

Only the compact form with ``{"alg": "HS256", "typ": "JWT"}`` is produced or accepted; any other
algorithm (``none`` included) is refused, as a real verifier must.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any, Final

_HEADER: Final = {"alg": "HS256", "typ": "JWT"}


class JWTError(Exception):
    """A token that is not a well-formed JWT signed with our key; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    # JWTs drop base64 padding; restore it, and refuse characters outside the URL-safe alphabet
    # instead of silently skipping them as b64decode would.
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded, altchars=b"-_", validate=True)


def _sign(signing_input: bytes, key: bytes) -> bytes:
    return hmac.new(key, signing_input, hashlib.sha256).digest()


def encode(claims: dict[str, Any], key: bytes) -> str:
    """Sign ``claims`` with ``key`` and return the compact JWT."""
    header = _b64encode(json.dumps(_HEADER, separators=(",", ":")).encode())
    payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    return f"{header}.{payload}.{_b64encode(_sign(signing_input, key))}"


def decode(token: str, key: bytes) -> dict[str, Any]:
    """Return the claims of ``token`` if ``key`` signed it; raise ``JWTError`` otherwise.

    Expiry is not checked here: the sandbox keeps each token's precise expiry itself.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise JWTError("malformed")
    header_b64, payload_b64, signature_b64 = parts
    try:
        header = json.loads(_b64decode(header_b64))
        signature = _b64decode(signature_b64)
        payload = _b64decode(payload_b64)
    except (binascii.Error, ValueError) as exc:
        raise JWTError("malformed") from exc
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise JWTError("unsupported algorithm")
    # Compare in constant time so the signature cannot be guessed byte by byte.
    expected = _sign(f"{header_b64}.{payload_b64}".encode("ascii"), key)
    if not hmac.compare_digest(signature, expected):
        raise JWTError("bad signature")
    try:
        claims = json.loads(payload)
    except ValueError as exc:
        raise JWTError("malformed") from exc
    if not isinstance(claims, dict):
        raise JWTError("malformed")
    return claims
