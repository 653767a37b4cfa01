"""A credential's token record as the fleet's Redis holds it, and as a process holds it.

Redis holds :class:`Stored` (token_scripts.FIELDS): server times in ms, ``access`` and
``refresh`` sealed. A process holds tokens.TokenRecord: times on its own clock, values in
the clear. :class:`TokenCodec` turns one into the other for one credential.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from .sealing import Sealer
from .token_scripts import FIELDS
from .tokens import RefreshToken, Token

log = structlog.get_logger("proxy.state")


@dataclass(frozen=True, slots=True)
class Stored:
    """The token hash as a script returned it; times in ms on the server's clock."""

    gen: int
    id: str | None
    access: str | None
    obtained: int | None
    expires: int | None
    renew: int | None
    usable: int | None
    refresh: str | None
    refresh_until: int | None
    failures: int
    rejections: int
    outcome: str | None
    wall: float | None
    by: str | None


@dataclass(frozen=True, slots=True)
class Reply:
    """A script's answer: its outcome, the server's ``now`` (ms), its number, the record."""

    outcome: str
    now: int
    n: int
    stored: Stored


def parse(raw: Any) -> Reply:
    """The reply of the lock, commit, fail or read script."""
    values = [_text(value) for value in raw[3:]]
    values += [None] * (len(FIELDS) - len(values))
    f = dict(zip(FIELDS, values, strict=True))
    stored = Stored(
        gen=_int(f["gen"]) or 0,
        id=f["id"],
        access=f["access"],
        obtained=_int(f["obtained"]),
        expires=_int(f["expires"]),
        renew=_int(f["renew"]),
        usable=_int(f["usable"]),
        refresh=f["refresh"],
        refresh_until=_int(f["refresh_until"]),
        failures=_int(f["failures"]) or 0,
        rejections=_int(f["rejections"]) or 0,
        outcome=f["outcome"],
        wall=None if f["wall"] is None else float(f["wall"]),
        by=f["by"],
    )
    return Reply(_text(raw[0]) or "", int(raw[1]), int(raw[2]), stored)


class ServerTime:
    """Maps a reply's server times (ms) onto a store's clock: the store's ``now()`` at the
    reply, plus the time's distance from the server's ``now``. Off by at most the round
    trip, never by the machines' clock difference."""

    __slots__ = ("local_now", "server_now")

    def __init__(self, server_now: int, local_now: float) -> None:
        self.server_now = server_now
        self.local_now = local_now

    def local(self, server_ms: int) -> float:
        return self.local_now + (server_ms - self.server_now) / 1000


class TokenCodec:
    """Seals what goes to Redis and opens what comes back, for one credential.

    Remembers the last value seen of each field, sealed and open: a record read again is
    not decrypted again, and a spent refresh token is named to Redis as Redis holds it.
    ``seal_failures`` counts values that did not open (absent to the caller)."""

    __slots__ = ("_seen", "seal_failures", "sealer")

    def __init__(self, sealer: Sealer) -> None:
        self.sealer = sealer
        self._seen: dict[str, tuple[str, str]] = {}  # field -> (sealed, plain)
        self.seal_failures = 0

    def seal(self, field: str, value: str) -> str:
        return self.sealer.seal(field, value)

    def remember(self, field: str, sealed: str, value: str) -> None:
        """Redis holds ``value`` as ``sealed`` now (a commit went through)."""
        self._seen[field] = (sealed, value)

    def open(self, field: str, sealed: str) -> str | None:
        seen = self._seen.get(field)
        if seen is not None and seen[0] == sealed:
            return seen[1]
        value = self.sealer.open(field, sealed)
        if value is None:
            # Another key in one fleet, or tampering: fetched anew, but worth a look.
            self.seal_failures += 1
            log.warning("token_seal_unopened", cred=self.sealer.cred_id, field=field)
            return None
        self._seen[field] = (sealed, value)
        return value

    def sealed_spent(self, spent: str | None) -> str:
        """``spent`` as Redis holds it, if it is the refresh token last seen there; ''
        when it is not (then it is not in Redis to drop)."""
        seen = self._seen.get("refresh")
        return seen[0] if spent is not None and seen is not None and seen[1] == spent else ""

    def token(self, stored: Stored, at: ServerTime) -> Token | None:
        """The stored token, or None when there is none or it does not open."""
        if (
            stored.access is None
            or stored.obtained is None
            or stored.expires is None
            or stored.renew is None
            or stored.usable is None
        ):
            return None
        value = self.open("access", stored.access)
        if value is None:
            return None
        return Token(
            value,
            at.local(stored.obtained),
            at.local(stored.expires),
            at.local(stored.renew),
            at.local(stored.usable),
        )

    def refresh(self, stored: Stored, at: ServerTime) -> RefreshToken | None:
        """The stored refresh token, or None when there is none or it does not open."""
        if stored.refresh is None:
            return None
        value = self.open("refresh", stored.refresh)
        if value is None:
            return None
        until = None if stored.refresh_until is None else at.local(stored.refresh_until)
        return RefreshToken(value, until)


def ms(seconds: float) -> int:
    return round(seconds * 1000)


def until(refresh: RefreshToken | None, now: float) -> str:
    """ms from ``now`` until ``refresh`` stops being presented; '' when unknown."""
    if refresh is None or refresh.usable_until is None:
        return ""
    return str(ms(refresh.usable_until - now))


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _int(text: str | None) -> int | None:
    return None if text is None else int(float(text))
