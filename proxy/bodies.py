"""The request body as it goes upstream: held for a replay, buffered whole, or streamed.

    Content-Length, small enough to replay  -> bytes, sent again on a retry or 401 replay
    Content-Length, larger                  -> streamed once, as it arrives
    chunked, request_buffering on (default) -> read whole before anything is sent (past
                                               the replay limit, at least 64 KiB, into an
                                               unlinked temp file), then sent with its
                                               Content-Length
    chunked, request_buffering off          -> read ahead as far, then streamed, chunked

Buffering a chunked body whole is what keeps a malformed chunk from ever reaching the
upstream: the chunk framing is checked end to end before the upstream sees the head. A
Content-Length body cannot be malformed, only cut short, and a cut body never ends its
upstream request either.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from typing import IO, Final

import structlog

from .config import ServerConfig
from .errors import BadRequestError, BodyTooLargeError, InternalError, OverloadedError
from .http.server import Body, MalformedBodyError, Request
from .http.transport import BodyStream

log = structlog.get_logger("proxy.bodies")

# A chunked body is held in memory up to this size (or the replay limit if larger); past
# it, it goes to a temp file (as nginx's client_body_buffer_size), so a thousand slow
# uploads cost disk, not memory.
READ_AHEAD: Final = 64 * 1024
_SPOOL_READ: Final = 64 * 1024


class Spool:
    """Where buffered bodies go, and how much disk they may take: each (``max_body``) and
    all of them at once (``max_total``). One per process; it outlives reloads, so bodies
    spooled under the old config still count."""

    __slots__ = ("directory", "max_body", "max_total", "used")

    def __init__(self, server: ServerConfig | None = None) -> None:
        self.used = 0
        self.configure(server or ServerConfig())

    def configure(self, server: ServerConfig) -> None:
        self.directory = server.spool_dir
        self.max_body = server.max_buffered_body
        self.max_total = server.max_spooled_total


async def request_body(
    request: Request,
    replay_limit: int | None,
    *,
    buffering: bool,
    spool: Spool,
) -> tuple[bytes | BodyStream | None, int | None, bool]:
    """The body to send upstream, its length, and whether it can be sent again.

    The length is the Content-Length to send; None when there is none: no body at all
    (no framing header), or a stream of unknown length (sent chunked). Bodies of known
    length up to ``replay_limit`` (None: no replay is ever made) are read into memory so a
    retry or 401 replay sends them again exactly; anything else streams once, because a
    consumed stream would replay as an empty body (and the upstream would answer 200 to
    it). A chunked body is never replayed, even when buffered: bodies that arrive without
    a length are not retried. A :class:`Spooled` body must be closed by the caller.
    """
    length = request.content_length
    if not request.body_exists:
        # An explicit "Content-Length: 0" (a bodiless POST) is forwarded as such.
        return None, (0 if length == 0 else None), True
    body = request.content
    # A chunked body is held in memory as far as a replay would hold it: a bytes body may
    # still be resent when a pooled upstream connection turns out to be closed.
    in_memory = READ_AHEAD if replay_limit is None else max(replay_limit, READ_AHEAD)
    try:
        if length is not None:
            if replay_limit is not None and length <= replay_limit:
                return await body.readexactly(length), length, True
            return body, length, False
        if buffering:
            whole = await _buffer(body, in_memory, spool)
            return whole, len(whole), False
        ahead: list[bytes] = []
        size = 0
        while size <= in_memory:
            chunk = await body.readany()
            if not chunk:
                joined = b"".join(ahead)
                return joined, len(joined), False
            ahead.append(chunk)
            size += len(chunk)
    except MalformedBodyError as exc:
        raise BadRequestError("malformed request body") from exc
    return _Prefixed(ahead, body), None, False


async def _buffer(body: Body, in_memory: int, spool: Spool) -> bytes | Spooled:
    """Read a chunked body to its end: in memory up to ``in_memory``, then into a temp
    file."""
    limit = spool.max_body
    ahead: list[bytes] = []
    size = 0
    spooled: Spooled | None = None
    try:
        while chunk := await body.readany():
            size += len(chunk)
            if size > limit:
                raise BodyTooLargeError(f"a chunked request body may hold at most {limit} bytes")
            if spooled is not None:
                spooled.write(chunk)
            elif size <= in_memory:
                ahead.append(chunk)
            else:
                spooled = Spooled(spool)
                for held in ahead:
                    spooled.write(held)
                spooled.write(chunk)
                ahead.clear()
        if spooled is None:
            return b"".join(ahead)
        spooled.rewind()
    except BaseException:
        if spooled is not None:
            spooled.close()
        raise
    return spooled


class Spooled:
    """A buffered body in an already-unlinked temp file: nothing is left on disk if the
    process dies, and the space is freed as soon as the body has been sent (or the request
    ends).

    The file is written and read in the event loop, not a thread: these are page-cache
    copies of at most 64 KiB, cheaper than a thread hop (as nginx writes its temp files).
    Reading yields to the loop after each block, so sending a large body to a fast
    upstream never holds up the other connections.
    """

    __slots__ = ("_file", "_sent", "_size", "_spool")

    def __init__(self, spool: Spool) -> None:
        self._size = 0
        self._sent = False
        self._spool = spool
        try:
            # Closed by close(): the file outlives this call by design.
            self._file: IO[bytes] = tempfile.TemporaryFile(dir=spool.directory)  # noqa: SIM115
        except OSError as exc:
            raise _spool_failed(exc) from None

    def write(self, chunk: bytes) -> None:
        spool = self._spool
        if spool.used + len(chunk) > spool.max_total:
            # Every buffered body together may take only so much disk: past it, this one
            # is turned away (and may be sent again later), not the disk filled.
            log.warning("spool_full", max_spooled_total=spool.max_total)
            raise OverloadedError("no room to buffer the request body; try again later")
        try:
            self._file.write(chunk)
        except OSError as exc:  # a full disk: the client's request is lost, not corrupted
            raise _spool_failed(exc) from None
        spool.used += len(chunk)
        self._size += len(chunk)

    def rewind(self) -> None:
        try:
            self._file.flush()  # a write error held in the buffer surfaces here
            self._file.seek(0)
        except OSError as exc:
            raise _spool_failed(exc) from None

    def __len__(self) -> int:
        return self._size

    async def readany(self) -> bytes:
        await asyncio.sleep(0)
        if self._sent:
            return b""
        # Closed before its end (the request is over): raises ValueError, so the upstream
        # request fails rather than ending short.
        block = self._file.read(_SPOOL_READ)
        if not block:
            self._sent = True
            self.close()  # all sent: free the disk space now, not when the answer ends
        return block

    def close(self) -> None:
        if self._file.closed:
            return
        self._spool.used -= self._size
        # Closing flushes what is still buffered: after a write error it fails the same
        # way, but the file is closed all the same, and its contents are unwanted.
        with contextlib.suppress(OSError):
            self._file.close()


def _spool_failed(exc: OSError) -> InternalError:
    log.error("body_spool_failed", error=type(exc).__name__, detail=exc.strerror)
    return InternalError("could not buffer the request body")


class _Prefixed:
    """A body stream whose first chunks were already read (see request_body)."""

    __slots__ = ("_ahead", "_rest")

    def __init__(self, ahead: list[bytes], rest: Body) -> None:
        self._ahead = ahead
        self._rest = rest

    async def readany(self) -> bytes:
        if self._ahead:
            return self._ahead.pop(0)
        return await self._rest.readany()
