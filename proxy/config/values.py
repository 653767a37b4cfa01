"""What a single config key loads into, when a str or a number is not enough: a secret, an
upstream URL, who may read the admin endpoints.

Kept below the checks (which build them) and the model (which declares them), so that each
key's check can be named on its model field without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from yarl import URL


class Secret:
    """A credential from the config; its repr and str never show the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Upstream:
    """An upstream origin plus an optional base path (percent-encoded, no trailing slash)."""

    scheme: str
    host: str  # as the Host header spells it: IPv6 literals keep their brackets
    port: int
    base_path: str

    @property
    def url(self) -> str:
        """The upstream as configured, for logs and ``check``: no default port, the base
        path exactly as written (``encoded``: yarl neither re-quotes nor normalises it)."""
        return str(
            URL.build(
                scheme=self.scheme,
                host=self.host,
                port=self.port,
                path=self.base_path,
                encoded=True,
            )
        )


@dataclass(frozen=True, slots=True)
class AdminAccess:
    """Who may read /-/metrics and /-/status (``server.admin_access``): anyone, a peer on
    this host (``loopback``), or the one client named (``client:NAME``)."""

    scope: Literal["any", "loopback", "client"] = "any"
    client: str | None = None  # the [clients.NAME] when scope is "client"

    @classmethod
    def parse(cls, text: str) -> AdminAccess:
        """``any``, ``loopback`` or ``client:NAME``; ValueError says what is allowed."""
        if text == "any":
            return cls("any")
        if text == "loopback":
            return cls("loopback")
        if text.startswith("client:"):
            return cls("client", text.removeprefix("client:"))
        raise ValueError(f"must be any, loopback or client:NAME, got {text!r}")
