"""structlog set-up: JSON lines on stdout (or console output for humans), secrets redacted.

Configured once by the command line at start-up; modules only ever call
``structlog.get_logger(...)`` and log ``snake_case`` events with key=value pairs. Every
line, aiohttp's own included, passes the Redactor before it is rendered.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import IO, Any, BinaryIO, Final, Literal, TextIO, cast

import orjson
import structlog

LEVELS: Final = ("debug", "info", "warning", "error")
LogFormat = Literal["json", "console"]

REDACTED: Final = "[redacted]"
# Keys whose values are credentials whatever they hold.
SENSITIVE_KEYS: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "client_secret",
        "password",
        "api_key",
        "api_secret",
        "apikey",
        "apisecret",
        "secret",
        "key",
        "x-proxy-key",
    }
)
# Keys we fill with values of our own making: not worth scanning on every line.
_TRUSTED_KEYS: Final = frozenset(
    {
        "event",
        "level",
        "log_level",
        "timestamp",
        "request_id",
        "method",
        "route",
        "auth",
        "client",
        "remote",
        "grant",
        "upstream",
        "logger",
    }
)
_CREDENTIAL_PATTERNS: Final = re.compile(
    r"(?i)\b(?:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"  # an Authorization value
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"  # a JWT
)


class Redactor:
    """A processor that blanks credential-named keys and scrubs credentials from strings:
    the config's secrets (set with :meth:`update`), bearer/basic values and JWTs."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _CREDENTIAL_PATTERNS.sub(REDACTED, text)

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if key in _TRUSTED_KEYS:
                continue
            if key.lower() in SENSITIVE_KEYS:
                event[key] = REDACTED
            elif isinstance(value, str):
                event[key] = self.scrub(value)
            elif isinstance(value, list | tuple | dict):
                event[key] = self.scrub(str(value)) if _has_credential(self, value) else value
        return event


def _has_credential(redactor: Redactor, value: Any) -> bool:
    text = str(value)
    return redactor.scrub(text) != text


def _orjson_bytes(logger: Any, method: str, event: MutableMapping[str, Any]) -> bytes:
    return orjson.dumps(event, default=repr)


def configure(
    level: str = "info",
    fmt: LogFormat = "json",
    *,
    stream: IO[bytes] | None = None,
    redactor: Redactor | None = None,
    cache: bool = True,
) -> Redactor:
    """Route every structlog event, and stdlib logging, through one redacting chain.

    Returns the Redactor so the caller can tell it the config's secrets (and new ones on
    reload). ``cache=False`` keeps structlog.testing.capture_logs() usable in tests.
    """
    redactor = redactor or Redactor()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks as plain text, never with frame locals: locals can hold secrets.
        structlog.processors.format_exc_info,
        redactor,
    ]
    out = stream or sys.stdout.buffer
    if fmt == "console":
        renderer: Any = structlog.dev.ConsoleRenderer(colors=False)
        factory: Any = structlog.PrintLoggerFactory(
            sys.stdout if stream is None else cast(TextIO, _Text(out))
        )
    else:
        renderer = _orjson_bytes  # bytes straight to the stream: ~1/3 of json + print
        factory = structlog.BytesLoggerFactory(cast(BinaryIO, out))
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=factory,
        cache_logger_on_first_use=cache,
    )
    _route_stdlib(shared, fmt, level, out)
    return redactor


class _Text:
    """A text view of a byte stream for the console renderer."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw

    def write(self, text: str) -> None:
        self._raw.write(text.encode())

    def flush(self) -> None:
        self._raw.flush()


def _route_stdlib(shared: list[Any], fmt: LogFormat, level: str, out: IO[bytes]) -> None:
    """aiohttp logs through stdlib logging (server errors, with the request line): send it
    through the same redaction and rendering, instead of a raw traceback on stderr."""
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(_Text(out))
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level.upper()]))
