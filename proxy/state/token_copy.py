"""A process's copy of a credential's token record, and where it stands with the fleet's.

The fleet's token store (redis_tokens.py) asks Redis; this module keeps what the answers
mean for the process, without any I/O: which of the fleet's commits the copy holds, which
token a reply brings, what a lock, a commit or a failure changes.
"""

from __future__ import annotations

from dataclasses import replace

from .token_codec import ServerTime, Stored, TokenCodec
from .tokens import RefreshToken, Token, TokenRecord, _unless_spent


class FleetCopy:
    """What read() returns (``record``), and its place in the fleet.

    ``record.generation`` is this copy's own: it grows with every token committed here or
    adopted, so the manager's generations never meet the fleet's. ``id`` and ``gen`` name
    the fleet's commit the copy last took (None and 0: none yet); ``local_only``: the token
    was committed here while Redis was away. ``adopted`` counts tokens taken from a commit
    another process made."""

    __slots__ = ("_codec", "_owner", "adopted", "gen", "id", "local_only", "record")

    def __init__(self, codec: TokenCodec, owner: str) -> None:
        self._codec = codec
        self._owner = owner
        self.record = TokenRecord()
        self.id: str | None = None
        self.gen = 0
        self.local_only = False
        self.adopted = 0

    def usable(self, stored: Stored, at: ServerTime, now: float) -> Token | None:
        """The stored token, if it opens and may still be sent at ``now``."""
        token = self._codec.token(stored, at)
        return token if token is not None and now < token.usable_until else None

    def adopt(self, stored: Stored, token: Token, at: ServerTime, backoff_ms: int) -> None:
        """Take the fleet's token (``token``, from ``stored``), as a new generation here,
        unless the copy holds it already."""
        if stored.id == self.id and not self.local_only:
            return
        if stored.by != self._owner:
            self.adopted += 1
        self.id, self.gen, self.local_only = stored.id, stored.gen, False
        self.record = TokenRecord(
            self.record.generation + 1,
            token,
            self._codec.refresh(stored, at),
            failures=stored.failures,
            rejections=stored.rejections,
            retry_at=at.local(at.server_now + backoff_ms) if backoff_ms > 0 else 0.0,
            last_outcome=stored.outcome,
            last_fetch=stored.wall,
        )

    def back_off(self, stored: Stored, retry_at: float) -> None:
        """The fleet backs off until ``retry_at``: the copy's token stays."""
        self.record = replace(self._failures(stored), retry_at=retry_at)

    def acquired(self, stored: Stored, at: ServerTime) -> None:
        """The lock is ours: take what the fetch needs from the fleet's record."""
        record = self._failures(stored)
        # The fleet's refresh token is the one to present, none included (spent), unless
        # no token was ever committed there (a flushed Redis) or ours is newer (committed
        # here while Redis was away, it presented the fleet's).
        if stored.id is not None and not self.local_only:
            record = replace(record, refresh=self._codec.refresh(stored, at))
        self.record = record

    def committed(
        self, token: Token, refresh: RefreshToken | None, commit: tuple[str, int], wall: float
    ) -> TokenRecord:
        """The fleet took our token as its commit ``commit`` (id, generation)."""
        (self.id, self.gen), self.local_only = commit, False
        self.record = TokenRecord(
            self.record.generation + 1, token, refresh, last_outcome="ok", last_fetch=wall
        )
        return self.record

    def commit_here(
        self, token: Token, refresh: RefreshToken | None, generation: int, wall: float
    ) -> TokenRecord | None:
        """Keep ``token`` in this process only (as LocalTokenStore.commit would)."""
        if self.record.generation != generation:
            return None
        self.local_only = True
        self.record = TokenRecord(
            generation + 1, token, refresh, last_outcome="ok", last_fetch=wall
        )
        return self.record

    def failed(
        self,
        reason: str,
        *,
        rejected: bool,
        retry_at: float,
        spent: str | None,
        issued: bool,
        refresh: RefreshToken | None,
        wall: float,
    ) -> TokenRecord:
        """The record after a failed fetch, as LocalTokenStore.fail writes it (not yet
        installed: the fleet's counts may replace this process's)."""
        record = self.record
        failures, rejections = (0, 0) if issued else (record.failures, record.rejections)
        if not issued:
            refresh = _unless_spent(record.refresh, spent)
        return replace(
            record,
            refresh=refresh,
            failures=failures + (not rejected),
            rejections=rejections + rejected,
            retry_at=retry_at,
            last_outcome=reason,
            last_fetch=wall,
        )

    def drop_spent(self, spent: str | None) -> None:
        refresh = _unless_spent(self.record.refresh, spent)
        if refresh is not self.record.refresh:
            self.record = replace(self.record, refresh=refresh)

    def _failures(self, stored: Stored) -> TokenRecord:
        """The copy's record with the fleet's failure counts, when it has any."""
        if stored.outcome is None:
            return self.record
        return replace(
            self.record,
            failures=stored.failures,
            rejections=stored.rejections,
            last_outcome=stored.outcome,
            last_fetch=stored.wall,
        )
