"""The request log: one JSON-ready entry per request received at a vendor path.

Entries are added when a request arrives (so ``seq`` is arrival order) and get their ``status``
when the answer is decided; an entry still in flight has ``status: null``. Secrets are kept on
purpose: this is the fake vendor, and tests check exactly what reached it.
"""

from __future__ import annotations

from collections import deque
from typing import Any, TypedDict

from .settings import Kind, Vendor


class TokenEntry(TypedDict):
    """A request to a token endpoint."""

    seq: int
    time: float
    vendor: Vendor
    kind: Kind
    method: str
    path: str
    status: int | None
    grant_type: str | None
    fields: dict[str, Any] | None
    basic_auth: list[str] | None
    content_type: str | None
    headers: list[list[str]]


class ApiEntry(TypedDict):
    """A request to a vendor API."""

    seq: int
    time: float
    vendor: Vendor
    kind: Kind
    method: str
    path: str
    status: int | None
    token_jti: str | None
    token_sub: str | None
    token_expired: bool
    token_remaining: float | None
    authorization_count: int
    headers: list[list[str]]


LogEntry = TokenEntry | ApiEntry


class RequestLog:
    """The newest ``limit`` entries; ``seq`` keeps counting across clears."""

    __slots__ = ("_entries", "_seq")

    def __init__(self, limit: int) -> None:
        self._entries: deque[LogEntry] = deque(maxlen=limit)
        self._seq = 0

    def next_seq(self) -> int:
        """The sequence number for the next entry."""
        self._seq += 1
        return self._seq

    def add(self, entry: LogEntry) -> None:
        self._entries.append(entry)

    def entries(self) -> list[LogEntry]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
