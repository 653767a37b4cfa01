"""structlog set-up: JSON lines on stdout (or console output for humans).

Configured once by the command line at start-up; modules only ever call
``structlog.get_logger(...)`` and log ``snake_case`` events with key=value pairs.
"""

from __future__ import annotations

import logging
import sys
from typing import Final, Literal

import structlog

LEVELS: Final = ("debug", "info", "warning", "error")
LogFormat = Literal["json", "console"]


def configure(level: str = "info", fmt: LogFormat = "json") -> None:
    """Route every structlog event through one processor chain to stdout."""
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks as plain text, never with frame locals: locals can hold secrets.
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # aiohttp's own loggers (server errors) go to stderr at warning and above.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s: %(message)s")
