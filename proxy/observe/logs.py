"""structlog set-up: JSON lines on stdout (or console output for humans), secrets redacted.

Configured once by the command line at start-up; modules only ever call
``structlog.get_logger(...)`` and log ``snake_case`` events with key=value pairs. Every
line, those of stdlib logging included, passes the Redactor before it is rendered.
"""

from __future__ import annotations

import asyncio
import logging
import re
import select
import sys
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from contextvars import ContextVar
from typing import Any, BinaryIO, Final, Literal, Protocol, TextIO, cast

import orjson
import structlog

LEVELS: Final = ("debug", "info", "warning", "error")

# The id of the request being handled, in the handling task's context. One ContextVar set
# per request (~0.1 µs) where structlog's clear + bind_contextvars took ~2 µs.
REQUEST_ID: Final[ContextVar[str | None]] = ContextVar("request_id", default=None)


def _add_request_id(logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def _add_worker(index: int) -> Callable[[Any, str, MutableMapping[str, Any]], Any]:
    def add(logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        event["worker"] = index
        return event

    return add


class ByteSink(Protocol):
    """Where rendered lines go: a binary stream, or a LineBuffer in front of one."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


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
        "worker",
    }
)
_CREDENTIAL_PATTERNS: Final = re.compile(
    r"(?i)\b(?:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"  # an Authorization value
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"  # a JWT
)


class Redactor:
    """A processor that blanks credential-named keys and scrubs credentials from strings:
    the config's secrets (set with :meth:`update`), bearer/basic values and JWTs."""

    __slots__ = ("_current", "_secrets")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._current: frozenset[str] = frozenset()
        self._secrets: tuple[str, ...] = ()
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        """The secrets of a config just loaded. Those of the config it replaces are kept
        too: requests in flight finish on it (up to shutdown_grace) and may still log a
        rotated secret; one reload later they are dropped."""
        fresh = frozenset(s for s in secrets if len(s) >= 4)
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = tuple(sorted(fresh | self._current, key=len, reverse=True))
        self._current = fresh

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
                # Scrubbed item by item, keeping its shape: a list logged as a JSON array
                # stays one (a parser of the logs relies on it), and a credential-named
                # key inside a dict is blanked as at the top.
                event[key] = self._scrub_nested(value)
        return event

    def _scrub_nested(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {
                k: REDACTED
                if isinstance(k, str) and k.lower() in SENSITIVE_KEYS
                else self._scrub_nested(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._scrub_nested(item) for item in value]
        text = str(value)
        return value if self.scrub(text) == text else self.scrub(text)


def _console_view(logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
    """Console lines for a human: an access line opens with its status, method and path
    (as nginx's does), and a field without a value is left out rather than printed as
    Python's ``None``."""
    if event.get("event") == "access":
        event["event"] = (
            f"{event.pop('status', '-')} {event.pop('method', '-')} {event.pop('path', '-')}"
        )
    for key in [key for key, value in event.items() if value is None]:
        del event[key]
    return event


def _orjson_bytes(logger: Any, method: str, event: MutableMapping[str, Any]) -> bytes:
    return orjson.dumps(event, default=repr)


def configure(
    level: str = "info",
    fmt: LogFormat = "json",
    *,
    stream: ByteSink | None = None,
    redactor: Redactor | None = None,
    cache: bool = True,
    worker: int | None = None,
) -> Redactor:
    """Route every structlog event, and stdlib logging, through one redacting chain.

    Returns the Redactor so the caller can tell it the config's secrets (and new ones on
    reload). ``cache=False`` keeps structlog.testing.capture_logs() usable in tests.
    ``worker``: the index of this worker of a group (serve --workers N), put on every line.
    """
    redactor = redactor or Redactor()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        *([] if worker is None else [_add_worker(worker)]),
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks as plain text, never with frame locals: locals can hold secrets.
        structlog.processors.format_exc_info,
        redactor,
    ]
    out = stream or sys.stdout.buffer
    if fmt == "console":
        renderer: Any = _console_renderer()
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


def _console_renderer() -> Callable[[Any, str, MutableMapping[str, Any]], str]:
    render = structlog.dev.ConsoleRenderer(colors=False, sort_keys=False)

    def view(logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        return render(logger, method, _console_view(logger, method, event))

    return view


class _Text:
    """A text view of a byte stream for the console renderer."""

    def __init__(self, raw: ByteSink) -> None:
        self._raw = raw

    def write(self, text: str) -> None:
        self._raw.write(text.encode())

    def flush(self) -> None:
        self._raw.flush()


def _route_stdlib(shared: list[Any], fmt: LogFormat, level: str, out: ByteSink) -> None:
    """Libraries log through stdlib logging: asyncio (an exception no task retrieved, a
    transport's error) and aiohttp, which is left only on token requests and in the sandbox
    (its server errors carry the request line). Their lines take the same redaction and
    rendering, instead of a raw traceback on stderr."""
    renderer: Any = _console_renderer() if fmt == "console" else structlog.processors.JSONRenderer()
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(_Text(out))
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level.upper()]))


AccessLog = Callable[[dict[str, Any]], None]
"""Writes one request's access line (its fields, request_id included)."""


def structlog_access_log() -> AccessLog:
    """Access lines through the general structlog chain (console format, tests)."""
    log = structlog.get_logger("proxy.forward")

    def write(fields: dict[str, Any]) -> None:
        log.info("access", **fields)

    return write


class JsonAccessLog:
    """Access lines rendered straight to JSON bytes: ~2.5 µs a line against ~12 µs through
    the structlog chain, on the one log call every request makes. The fields are the
    proxy's own numbers and names; the path, the only client text, is scrubbed as the
    Redactor scrubs any line."""

    __slots__ = ("_out", "_redactor", "_second", "_stamp", "_worker")

    def __init__(self, out: BinaryIO, redactor: Redactor, worker: int | None = None) -> None:
        self._out = out
        self._redactor = redactor
        self._worker = worker
        self._second = -1
        self._stamp = ""

    def __call__(self, fields: dict[str, Any]) -> None:
        fields["path"] = self._redactor.scrub(fields["path"])
        fields["event"] = "access"
        fields["level"] = "info"
        if self._worker is not None:
            fields["worker"] = self._worker
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        fields["timestamp"] = f"{self._stamp}.{int((now - second) * 1e6):06d}Z"
        out = self._out
        out.write(orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE))
        out.flush()


def access_log(
    level: str, fmt: LogFormat, redactor: Redactor, out: ByteSink, worker: int | None = None
) -> AccessLog | None:
    """The access-line writer for this configuration; None when info lines are off.
    ``worker``: as for :func:`configure` (console lines get it from the structlog chain)."""
    if logging.getLevelNamesMapping()[level.upper()] > logging.INFO:
        return None
    if fmt == "json":
        return JsonAccessLog(cast(BinaryIO, out), redactor, worker)
    return structlog_access_log()


class LineBuffer:
    """Standard output for log lines, written in batches.

    A write system call per line was the largest single cost of the access log (~8 µs a
    request under load). Lines are collected and written together once 64 KiB are waiting
    or 50 ms after the first, whichever comes first; outside an event loop, and at exit
    (:meth:`flush_now`), at once. Every line goes through the same buffer, so their order
    is kept. A process killed with SIGKILL loses at most the last 50 ms of lines.

    ``shared``: other processes write to the same pipe (the workers of a group). A write
    of up to PIPE_BUF bytes to a pipe is never interleaved with another process's; a larger
    one may be, once the pipe is full. So batches go out in pieces of whole lines, each
    within PIPE_BUF (a longer line alone).
    """

    __slots__ = (
        "__weakref__",
        "_delay",
        "_limit",
        "_parts",
        "_piece",
        "_raw",
        "_size",
        "_timer",
    )

    def __init__(
        self, raw: ByteSink, delay: float = 0.05, limit: int = 64 * 1024, *, shared: bool = False
    ) -> None:
        self._raw = raw
        self._delay = delay
        self._limit = limit
        self._piece = select.PIPE_BUF if shared else 0
        self._parts: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def write(self, data: bytes) -> int:
        self._parts.append(data)
        self._size += len(data)
        if self._size >= self._limit:
            self.flush_now()
        return len(data)

    def flush(self) -> None:
        """Called after every line by the loggers: schedule the write, do not do it."""
        if not self._parts or self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush_now()
            return
        self._timer = loop.call_later(self._delay, self.flush_now)

    def flush_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._parts:
            data = b"".join(self._parts)
            self._parts.clear()
            self._size = 0
            if len(data) <= self._piece or not self._piece:
                self._raw.write(data)
            else:
                for piece in _whole_lines(data, self._piece):
                    self._raw.write(piece)
                    self._raw.flush()  # one write system call per piece
        self._raw.flush()


def _whole_lines(data: bytes, most: int) -> Iterator[bytes]:
    """``data`` in pieces that end at a line's end, each of at most ``most`` bytes unless
    a single line is longer."""
    start = 0
    while len(data) - start > most:
        end = data.rfind(b"\n", start, start + most) + 1
        if end <= start:  # a line longer than most: alone, whole
            end = data.find(b"\n", start + most) + 1 or len(data)
        yield data[start:end]
        start = end
    if start < len(data):
        yield data[start:]
