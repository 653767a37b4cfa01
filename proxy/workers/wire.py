"""The group's private wire: one request line over a Unix socket, one answer, then close.

The supervisor and each worker of ``serve --workers N`` listen on sockets in a directory
only the group's user can enter (mode 0700). A request is one line (``metrics``,
``status 1``); the answer is a status line (an HTTP status code) and the body, up to the
close. Nothing here is on the path of a proxied request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("proxy.workers")

Answer = tuple[int, bytes]
Handler = Callable[[str], Awaitable[Answer]]
_MAX_REQUEST = 256


async def ask(path: str, request: str) -> Answer:
    """Send ``request`` to the socket at ``path`` and read its answer (callers bound the
    wait). Raises OSError (nobody listens) or ValueError (a garbled answer)."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(request.encode() + b"\n")
        status, _, body = (await reader.read()).partition(b"\n")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return int(status), body


async def listen(path: str, handler: Handler) -> asyncio.Server:
    """Answer every request line that comes to ``path`` with ``handler``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readuntil(b"\n")
            status, body = await handler(line[:_MAX_REQUEST].decode(errors="replace").strip())
            writer.write(b"%d\n" % status + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # the asker gave up (its own timeout) or sent no request line
        except Exception:
            log.exception("group_request_failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_unix_server(serve, path, limit=_MAX_REQUEST)
