"""Just enough JWT to know when our own token expires."""

from __future__ import annotations

import base64
import binascii
import json


def expiry(token: str) -> float | None:
    """The ``exp`` claim (unix seconds) of a JWT, or None when it is not a JWT with one.

    No signature check: the issuer checks it, we only need to know when to renew.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)
