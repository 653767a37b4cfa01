"""The client leg: an HTTP/1.1 server over llhttp (httptools), made for a proxy.

aiohttp's web server spent most of the proxy's remaining CPU per request (a Request and its
router match, a StreamResponse, middlewares, a task per request); a prototype of this leg
served the same traffic at a third of the CPU. It also gives the proxy the last word on
framing: llhttp is strict (Content-Length with Transfer-Encoding, bad chunks, control bytes
and bare LFs are errors), a malformed request is answered with our own JSON 400 that never
echoes the request, and nothing of it reaches a handler.

    Server -> HttpConnection (one task per connection, requests answered in order)
           -> handler(Request) -> Reply, or a response streamed with Request.start/write/finish
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final

import httptools
import structlog
from multidict import CIMultiDict, CIMultiDictProxy

from ..errors import (
    BadRequestError,
    HeadTooLargeError,
    InternalError,
    OverloadedError,
    ProxyError,
    RequestTimeoutError,
    UnsupportedCodingError,
    VersionError,
)
from .flow import ByteQueue, WriteFlow

log = structlog.get_logger("proxy.server")

# Bounds on what a client may send before its request is complete.
MAX_HEAD: Final = 64 * 1024  # request line + headers (431 past it)
MAX_HEADERS: Final = 128  # header fields (431 past it)
# Bytes a connection holds for its handlers before it stops reading: request bodies not
# yet read and the heads of requests queued behind the one being answered. One socket
# read more can arrive after the pause; a handler that waits for a whole body (to keep it
# for a replay) raises the mark to that body's size (see Body.readexactly).
BUFFER_HIGH_WATER: Final = 256 * 1024
_MAX_QUEUED: Final = 16  # pipelined requests parsed ahead of the one being answered
_HEAD_END: Final = b"\r\n\r\n"
# A read this large may hold many pipelined heads; a smaller one holds too few to matter.
_SLICE_MIN: Final = 4096
_REASONS: Final = {s.value: s.phrase for s in HTTPStatus}
_LINGER_SECONDS: Final = 2.0
_LINGER_BYTES: Final = 1024 * 1024
# Connections turned away past max_connections that may linger at once (fds.RESERVE
# keeps descriptors for them).
_MAX_LINGERING_REFUSALS: Final = 64
_BODYLESS: Final = frozenset({204, 304})
_RESET_ON_CLOSE: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST
_CLOSING: Final = frozenset({400, 413, 500})  # replies after which the connection closes


class MalformedBodyError(ConnectionError):
    """The request's body broke HTTP/1.1 framing (a bad chunk) after its head was taken."""


_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class Body:
    """A request body as it arrives; reading it lets a connection paused for it read on.

    Bytes wait merged in a ByteQueue and are counted against the connection's buffer
    (see HttpConnection.hold): the bound is in bytes, however the client chunks them.
    """

    __slots__ = (
        "_conn",
        "_error",
        "_held",
        "_waiter",
        "eof",
        "interim_due",
        "malformed",
        "total_bytes",
    )

    def __init__(self, conn: HttpConnection, expect_continue: bool = False) -> None:
        self._conn = conn
        self._held = ByteQueue()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        # "Expect: 100-continue": the client waits for our go-ahead before sending. It is
        # given when the body is first waited for, never earlier: only then is this request
        # at the head of the line, with every answer before it written whole. The final
        # answer's head clears it (Request.start, Request.reply): no 100 after it.
        self.interim_due = expect_continue
        self.eof = False
        self.malformed = False
        self.total_bytes = 0

    def feed(self, data: bytes) -> None:
        self._held.append(data)
        self.total_bytes += len(data)
        self._conn.hold(len(data))
        self._wake()

    def end(self, error: BaseException | None = None) -> None:
        self.eof = True
        self._error = error
        self.interim_due = False
        self._wake()

    def discard(self) -> None:
        """The request is done: bytes its handler never read stop counting."""
        self._conn.release(self._held.clear())

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self, wanted: int = 0) -> None:
        conn = self._conn
        if self.interim_due:
            self.interim_due = False
            conn.write(_CONTINUE)
        self._waiter = asyncio.get_running_loop().create_future()
        conn.reading_since = conn.server.now()  # the client owes us body bytes
        conn.want(wanted)
        try:
            await self._waiter
        finally:
            conn.reading_since = None
            conn.want(0)

    def _take(self, limit: int = -1) -> bytes:
        data = self._held.take(limit)
        self._conn.release(len(data))
        return data

    async def readany(self) -> bytes:
        """The next bytes of the body, b"" at its end."""
        while not self._held:
            if self._error is not None:
                raise self._error
            if self.eof:
                return b""
            await self._wait()
        return self._take()

    async def readexactly(self, n: int) -> bytes:
        """The next ``n`` bytes; the connection buffers up to ``n`` for it, whatever its
        usual high-water mark (a body held whole for a replay must be able to arrive)."""
        while len(self._held) < n:
            if self._error is not None:
                raise self._error
            if self.eof:
                raise asyncio.IncompleteReadError(self._take(), n)
            await self._wait(n)
        return self._take(n)


class Reply:
    """A complete response: status, headers and a small body."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> None:
        self.status = status
        self.headers = headers or {}
        self.body = body


class Request:
    """One request as received, and the way to answer it by streaming."""

    __slots__ = (
        "_chunked",
        "_conn",
        "_pending",
        "body_exists",
        "content",
        "content_length",
        "finished",
        "headers",
        "keep_alive",
        "method",
        "raw_path",
        "remote",
        "scheme",
        "started",
        "status",
        "version",
    )

    def __init__(
        self,
        conn: HttpConnection,
        method: str,
        raw_path: str,
        headers: CIMultiDictProxy[str],
        version: str,
        keep_alive: bool,
    ) -> None:
        self._conn = conn
        self.method = method
        self.raw_path = raw_path
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.remote = conn.remote
        self.scheme = "http"
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None else None
        self.body_exists = bool(self.content_length) or "Transfer-Encoding" in headers
        expect = (
            self.body_exists
            and version == "1.1"
            and headers.get("Expect", "").lower() == "100-continue"
        )
        self.content = Body(conn, expect)
        self.started = False  # the response head is written
        self.finished = False
        self.status = 0
        self._chunked = False
        self._pending = b""

    def cut(self) -> None:
        """Abort the connection with a reset: the answer under way must look cut."""
        self._conn.cut()

    @property
    def head_sent(self) -> bool:
        """The response head has gone to the client (start() holds it back, see there)."""
        return self.started and not self._pending

    @property
    def shut_down(self) -> bool:
        """The server's shutdown cut this request off (its grace ran out)."""
        return self._conn.shut_down

    def start(self, status: int, headers: CIMultiDict[str]) -> None:
        """Write the response head; the body follows with write() and finish()."""
        self.content.interim_due = False
        self.status = status
        bodyless = self.method == "HEAD" or status in _BODYLESS or status < 200
        length = headers.get("Content-Length")
        if length is None and not bodyless:
            if self.version == "1.1":
                self._chunked = True
            else:
                self.keep_alive = False  # HTTP/1.0: the body ends where the connection does
        self._check_last()
        # Held back and sent with the first body bytes: one write (one send) for a small
        # answer instead of two.
        self._pending = self._head(status, headers, "Transfer-Encoding: chunked\r\n")
        self.started = True

    def retract(self) -> bool:
        """Take back a head that has not gone out yet (it waits for the first body bytes,
        see start), so the request can get another answer; False once anything was sent."""
        if not self._pending:
            return False
        self._pending = b""
        self._chunked = False
        self.started = False
        return True

    def _check_last(self) -> None:
        if not self.content.eof or self._conn.closing:
            self.keep_alive = False  # an unread body, or a connection being closed

    def _head(self, status: int, headers: Mapping[str, str], framing: str) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
        if "Date" not in headers:
            lines.append(self._conn.server.date_line())
        if self._chunked:
            lines.append(framing)
        if not self.keep_alive:
            lines.append("Connection: close\r\n")
        elif self.version != "1.1":
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        ends = len(lines)
        if text.count("\n") != ends or text.count("\r") != ends or "\0" in text:
            raise ValueError("refusing to send a response header with CR, LF or NUL")
        return text.encode("utf-8", "surrogateescape")

    async def write(self, data: bytes) -> None:
        if not data or self.method == "HEAD":
            return
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if self._pending:
            data = self._pending + data
            self._pending = b""
        self._conn.write(data)
        await self._conn.drain()

    def finish(self) -> None:
        end = b"0\r\n\r\n" if self._chunked and self.method != "HEAD" else b""
        self._conn.write(self._pending + end if self._pending else end)
        self._pending = b""
        self.finished = True

    def reply(self, reply: Reply) -> None:
        """Send a complete response in one write."""
        self.content.interim_due = False
        self.status = reply.status
        if reply.status in _CLOSING:
            # After a request we could not accept, trust no more of the stream (and for a
            # 413 its body's rest would have to be read to find the next request).
            self.keep_alive = False
        self._check_last()
        headers = dict(reply.headers)
        bodyless = self.method == "HEAD" or reply.status in _BODYLESS
        if reply.status not in _BODYLESS:
            headers["Content-Length"] = str(len(reply.body))
        head = self._head(reply.status, headers, "")
        self.started = True
        self._conn.write(head if bodyless else head + reply.body)
        self.finished = True


Handler = Callable[[Request], Awaitable[Reply | None]]
# The error (its status and message) and the peer's address -> our answer.
Refusal = Callable[[ProxyError, str | None], Reply]


class HttpConnection(WriteFlow):
    """One client connection: parse, queue, answer in order."""

    __slots__ = (
        "_body",
        "_closing",
        "_current",
        "_discarded",
        "_head_bytes",
        "_head_size",
        "_headers",
        "_heads",
        "_held",
        "_parser",
        "_paused_body",
        "_paused_queue",
        "_queue",
        "_queue_waiter",
        "_refused",
        "_task",
        "_trailer_size",
        "_trailers",
        "_unparsed",
        "_url",
        "_wanted",
        "busy",
        "head_started",
        "idle_since",
        "reading_since",
        "remote",
        "server",
        "shut_down",
        "transport",
        "writing_since",
    )

    def __init__(self, server: Server) -> None:
        super().__init__()
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self._parser = httptools.HttpRequestParser(self)
        # Each with the bytes its head holds (see hold()).
        self._queue: deque[tuple[Request | Reply, int]] = deque()
        self._queue_waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._refused = False  # turned away past max_connections
        self._discarded = 0
        self._paused_body = False
        self._paused_queue = False
        self._held = 0  # bytes held for handlers: unread bodies, queued heads
        self._wanted = 0  # bytes a handler waits for, when more than the high-water mark
        self._body: Body | None = None
        self._current: Request | None = None  # the request being answered
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0  # bytes of the head parsed so far; -1 between heads
        self._head_bytes = 0  # bytes received while a head (or trailer section) is incomplete
        self._heads = 0  # heads completed on this connection
        # Past the last chunk's size line, before on_message_complete: a trailer section
        # (llhttp reports its fields through on_header, after the body).
        self._trailers = False
        self._trailer_size = 0
        self._unparsed = b""  # read but held back until the queue has room
        self.busy = False  # a request is being answered
        self.head_started: float | None = None  # first byte of an incomplete request head
        # Since when a handler waits for the client to send body bytes, and to read what
        # was written: two clocks, so that a trickle of one cannot reset the other.
        self.reading_since: float | None = None
        self.writing_since: float | None = None
        self.idle_since = self._loop.time()
        self.shut_down = False  # abandoned by Server.stop, not by the client

    @property
    def closing(self) -> bool:
        """Nothing more will be read, and nothing is queued behind the request being
        answered: its answer is the connection's last."""
        return self._closing and not self._queue

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        if len(server.connections) >= server.max_connections:
            # A fast, cheap no: past the cap a connection costs a write and a close. The
            # close lingers (see _linger) so that a client whose request is already on its
            # way reads the 503 rather than a reset, but only for a few at a time: in a
            # flood the rest are closed at once, keeping descriptors for those served.
            self._closing = True
            peer = transport.get_extra_info("peername")
            refusal = server.refusal(
                OverloadedError("too many connections"), str(peer[0]) if peer else None
            )
            transport.write(_raw_reply(refusal, ""))  # type: ignore[attr-defined]
            if server.lingering_refusals < _MAX_LINGERING_REFUSALS:
                server.lingering_refusals += 1
                self._refused = True
                self._linger()
            else:
                transport.close()
            return
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if peer else None
        server.connections.add(self)
        # A connection that never sends a byte is held no longer than a slow head.
        self.head_started = self._loop.time()
        self._task = self._loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        if self._closing:
            # Lingering: what the client still sends after our last answer is dropped, up
            # to a bound (see _linger).
            self._discarded += len(data)
            if self._discarded > _LINGER_BYTES and self.transport is not None:
                self.transport.abort()
            return
        if self._unparsed:
            self._unparsed += data  # a read after the pause: it waits its turn too
            return
        if self._body is None and len(data) > _SLICE_MIN and data.count(_HEAD_END) > _MAX_QUEUED:
            self._feed_in_turn(data)
            return
        self._feed(data)

    def _feed_in_turn(self, data: bytes) -> None:
        """Parse a read that holds more pipelined heads than may be queued a slice at a
        time, and keep what is left unparsed once the queue is full. llhttp parses all it
        is given: a 256 KiB read of 30-byte requests would become some 8,000 queued
        requests at once, megabytes of objects that no byte count bounds."""
        start = 0
        while start < len(data):
            end = start
            for _ in range(_MAX_QUEUED):  # a heuristic cut: a body may hold CRLFCRLF too
                found = data.find(_HEAD_END, end)
                if found < 0:
                    end = len(data)
                    break
                end = found + len(_HEAD_END)
            self._feed(data[start:end])
            start = end
            if self._closing:
                return
            if self._paused_queue and start < len(data):
                self._unparsed = data[start:]  # parsed when the queue has room (_serve)
                return

    def _feed(self, data: bytes) -> None:
        body = self._body
        if self.head_started is None and body is None:
            self.head_started = self._loop.time()
        heads = self._heads
        fed = body.total_bytes if body is not None else 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade (h2c, websocket) and CONNECT: the request is answered as a plain one
            # (Upgrade is hop-by-hop and never forwarded); nothing after it is read.
            if self._body is not None:
                self._body.end()
                self._body = None
            self._stop_reading()
        except httptools.HttpParserError as exc:
            self._refuse(BadRequestError("malformed request"), exc)
            return
        if self._heads != heads:
            return
        if self._head_size >= 0 or (
            self._trailers and body is not None and body is self._body and body.total_bytes == fed
        ):
            # All of this read went into a head (or a trailer section) still incomplete:
            # bound what llhttp and httptools hold for a field that never ends.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._refuse(HeadTooLargeError("request head too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._refused:
            self.server.lingering_refusals -= 1
            return
        self.server.connections.discard(self)
        if self._body is not None:
            self._body.end(ConnectionResetError("client closed the connection"))
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the handler stops: its upstream request is cancelled too
        self.release_writers(ConnectionResetError("client closed the connection"))

    # -- parser callbacks ---------------------------------------------------------------
    # A ProxyError raised here stops parsing: the request is answered with it (see
    # _refuse) and the connection closed; nothing after it is read.

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_size = 0
        self._head_bytes = 0
        self._trailers = False
        self._trailer_size = 0
        if self.head_started is None:
            self.head_started = self._loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            raise HeadTooLargeError("request head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops the whitespace before a value, not after it; neither is part of
        # the value (RFC 9110 5.5), and "key " must compare equal to "key".
        value = value.rstrip(b" \t")
        if self._head_size < 0:
            # A trailer field, after the last chunk. Bounded like a head, then dropped:
            # a body goes upstream with a Content-Length (buffered) or re-chunked by us,
            # and no field of a request is added after the upstream got its head.
            self._trailer_size += len(name) + len(value) + 4
            if self._trailer_size > MAX_HEAD:
                raise HeadTooLargeError("request trailer section too large")
            return
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD or len(self._headers) >= MAX_HEADERS:
            raise HeadTooLargeError("request head too large")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        headers = CIMultiDictProxy(
            CIMultiDict(
                (name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
                for name, value in self._headers
            )
        )
        problem = _framing_problem(parser.get_http_version(), headers, parser.should_upgrade())
        if problem is not None:
            raise problem  # parsing stops here: nothing of this request is handled
        request = Request(
            self,
            parser.get_method().decode("ascii"),
            self._url.decode("utf-8", "surrogateescape"),
            headers,
            parser.get_http_version(),
            parser.should_keep_alive(),
        )
        size = self._head_size
        self._head_size = -1
        self._heads += 1
        self.head_started = None
        self._body = request.content
        if not request.body_exists:
            request.content.end()
        self._enqueue(request, size)
        self._held += size
        if self._held > BUFFER_HIGH_WATER:
            self.hold(0)

    def on_chunk_header(self) -> None:
        # A chunk's size line: body bytes follow, or (after the last chunk) trailers.
        self._trailers = True
        self._head_bytes = 0

    def on_body(self, body: bytes) -> None:
        self._trailers = False
        if self._body is not None:
            self._body.feed(body)

    def on_message_complete(self) -> None:
        self._trailers = False
        if self._body is not None:
            self._body.end()
            self._body = None

    # -- flow control -------------------------------------------------------------------

    def _enqueue(self, item: Request | Reply, held: int = 0) -> None:
        self._queue.append((item, held))
        if len(self._queue) > _MAX_QUEUED and not self._paused_queue:
            self._paused_queue = True
            self._sync_reading()
        waiter = self._queue_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def hold(self, size: int) -> None:
        """``size`` more bytes wait for a handler; past the high-water mark (or what a
        handler waits for, if more) the connection stops reading."""
        self._held += size
        if not self._paused_body and self._held > max(BUFFER_HIGH_WATER, self._wanted):
            self._paused_body = True
            self._sync_reading()

    def release(self, size: int) -> None:
        """``size`` bytes were taken (or dropped); read on once most are gone."""
        self._held -= size
        if self._paused_body and self._held <= BUFFER_HIGH_WATER // 4:
            self._paused_body = False
            self._sync_reading()

    def want(self, size: int) -> None:
        """A handler waits until ``size`` bytes of its body are held (0: no longer)."""
        self._wanted = size
        if self._paused_body and self._held < size:
            self._paused_body = False
            self._sync_reading()

    def _sync_reading(self) -> None:
        transport = self.transport
        if transport is None or self._closing or transport.is_closing():
            return
        if self._paused_body or self._paused_queue:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _stop_reading(self) -> None:
        self._closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        if self._write_paused:
            self.writing_since = self._loop.time()  # the client is not reading
            try:
                await self.writable()
            finally:
                self.writing_since = None

    def stalled_since(self) -> float | None:
        """Since when the client has kept the request being answered waiting (not
        sending its body, or not reading the answer), if it does."""
        reading, writing = self.reading_since, self.writing_since
        if reading is None:
            return writing
        return reading if writing is None else min(reading, writing)

    def _refuse(self, error: ProxyError, cause: BaseException | None = None) -> None:
        """A request we will not parse further: answer it (in turn) and close."""
        if cause is not None and isinstance(cause.__context__, ProxyError):
            error = cause.__context__  # raised by a parser callback
        self._stop_reading()
        body = self._body
        if body is not None:
            # The head was fine and the request is (or will be) handled: its body ends in
            # an error, so whatever was streamed upstream never completes, and the handler
            # answers 400 (see Body.malformed). One answer per request, then the close.
            self._body = None
            body.malformed = True
            body.end(MalformedBodyError(error.message))
            return
        self._enqueue(self.server.refusal(error, self.remote))

    # -- answering ----------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while True:
                while not self._queue:
                    if self._closing:
                        return
                    self._queue_waiter = self._loop.create_future()
                    await self._queue_waiter
                item, held = self._queue.popleft()
                if self._paused_queue and len(self._queue) <= _MAX_QUEUED // 2:
                    self._paused_queue = False
                    if self._unparsed:
                        pending, self._unparsed = self._unparsed, b""
                        self.data_received(pending)
                    self._sync_reading()
                self._held -= held
                if self._paused_body:
                    self.release(0)
                if isinstance(item, Reply):
                    item.headers = {**item.headers, "Connection": "close"}
                    self.write(_raw_reply(item, self.server.date_line()))
                    return
                self.busy = True
                self._current = item
                keep_alive = await self._answer(item)
                if not item.finished:
                    return  # cut or closed (see finally)
                self._current = None
                if self._write_paused:
                    # A whole answer can be written without waiting (our own replies,
                    # small ones): the next pipelined request waits until the client
                    # reads, so a client that never does holds no more than the buffer.
                    await self.drain()
                self.busy = False
                self.idle_since = self._loop.time()
                if not keep_alive or self.server.stopping:
                    return
        finally:
            self.busy = False
            current = self._current
            if current is not None and current.started and not current.finished:
                self.cut()  # an answer under way is cut: it must not end cleanly
            else:
                self._linger()

    def cut(self) -> None:
        """Abort with a reset (RST), never a FIN: a FIN ends a close-delimited answer
        (HTTP/1.0, no Content-Length) cleanly, and a cut body would look whole (RFC 9112
        8). Used for every answer the proxy cannot finish."""
        self._closing = True
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        transport.abort()

    def abandon(self) -> None:
        """Drop the connection now: an answer under way is cut (reset), anything else
        closed."""
        current = self._current
        if current is not None and current.started and not current.finished:
            self.cut()
        elif self.transport is not None:
            self.transport.abort()

    def _linger(self) -> None:
        """Close without destroying our last answer. Closing a socket with unread input
        makes the kernel send a reset, and a client still sending (a body we refused, a
        pipelined burst after a bad request) may then lose the answer it has not read
        yet. So: half-close (FIN after the answer), read and drop what still comes for up
        to _LINGER_SECONDS or _LINGER_BYTES, then close."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._closing = True
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()
        self._loop.call_later(_LINGER_SECONDS, self._end_linger, transport)

    def _end_linger(self, transport: asyncio.Transport) -> None:
        # close() waits until the client has read what is still buffered; a client that
        # never reads gets idle_timeout for it, then the connection goes.
        transport.close()
        self._loop.call_later(self.server.idle_timeout, transport.abort)

    async def _answer(self, request: Request) -> bool:
        server = self.server
        if server.in_flight >= server.max_in_flight:
            request.keep_alive = False
            request.reply(
                server.refusal(OverloadedError("too many requests in flight"), self.remote)
            )
            return False
        server.in_flight += 1
        try:
            reply = await server.handler(request)
            if reply is not None:
                request.reply(reply)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The last resort: handlers catch and count their own failures.
            log.exception("handler_failed")
            if request.started:
                return False  # a head is out: the close cuts the answer (see _serve)
            request.keep_alive = False
            request.reply(server.refusal(InternalError("internal error"), self.remote))
            return False
        finally:
            server.in_flight -= 1
            if request.content.total_bytes:
                request.content.discard()
        if not request.finished:
            return False
        return request.keep_alive


def _raw_reply(reply: Reply, date_line: str) -> bytes:
    lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in reply.headers.items())
    lines.append(date_line)
    lines.append(f"Content-Length: {len(reply.body)}\r\n\r\n")
    return "".join(lines).encode("utf-8") + reply.body


def _framing_problem(
    version: str, headers: CIMultiDictProxy[str], upgrade: bool
) -> ProxyError | None:
    """What llhttp lets through but a proxy must not (request smuggling, RFC 9112):
    every request is framed one way only, as both ends of the proxy will read it."""
    if version not in ("1.0", "1.1"):
        return VersionError("HTTP version not supported")
    hosts = headers.getall("Host", ())
    if len(hosts) > 1 or (version == "1.1" and not hosts):
        return BadRequestError("exactly one Host header is required")
    codings = headers.getall("Transfer-Encoding", ())
    if codings:
        if version == "1.0":
            # An HTTP/1.0 hop may not understand chunking: the body's end would be
            # ambiguous, and what follows it could run as a second request.
            return BadRequestError("Transfer-Encoding is not allowed in HTTP/1.0")
        if len(codings) > 1 or "," in codings[0]:
            return BadRequestError("only a single Transfer-Encoding: chunked is accepted")
        if codings[0].strip().lower() != "chunked":
            return UnsupportedCodingError("transfer coding not implemented")
    if upgrade and (headers.get("Content-Length", "0") != "0" or codings):
        return BadRequestError("an upgrade request may not carry a body")
    return None


class Server:
    """Listeners, their connections, the idle sweep and graceful shutdown."""

    def __init__(
        self,
        handler: Handler,
        refusal: Refusal,
        *,
        idle_timeout: float = 60.0,
        header_timeout: float = 10.0,
        max_connections: int = 10000,
        max_in_flight: int = 4096,
    ) -> None:
        self.handler = handler
        self.refusal = refusal
        self.connections: set[HttpConnection] = set()
        self.stopping = False
        self.max_connections = max_connections
        self.lingering_refusals = 0
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.idle_timeout = idle_timeout
        self._header_timeout = header_timeout
        # The sweep looks often enough to keep each deadline within a quarter of itself.
        self._tick = min(1.0, header_timeout / 4, idle_timeout / 4)
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._date = ("", 0)

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def date_line(self) -> str:
        now = int(time.time())
        if self._date[1] != now:
            self._date = (f"Date: {formatdate(now, usegmt=True)}\r\n", now)
        return self._date[0]

    async def listen(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> list[Any]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: HttpConnection(self),
            host,
            port,
            reuse_port=reuse_port or None,
            backlog=4096,
            ssl=tls,
            # A handshake is part of the request head: a client that stalls in it holds a
            # descriptor no max_connections counts (the connection is not made yet).
            ssl_handshake_timeout=self._header_timeout if tls is not None else None,
        )
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._tick, self._sweep)
        return [sock.getsockname() for sock in server.sockets]

    def _sweep(self) -> None:
        """Close what a client left hanging: a request head still incomplete after
        header_timeout (slowloris: 408), a keep-alive connection idle past idle_timeout,
        and a request whose client stopped sending its body or reading the answer for
        idle_timeout (aborted: the handler and its upstream request are cancelled)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self.connections):
            transport = conn.transport
            if transport is None:
                continue
            if conn.busy:
                waiting = conn.stalled_since()
                if waiting is not None and now - waiting > self.idle_timeout:
                    log.info("client_idle_cut", remote=conn.remote)
                    conn.abandon()
                continue
            started = conn.head_started
            if started is not None:
                if now - started > self._header_timeout:
                    conn.write(
                        _raw_reply(
                            self.refusal(RequestTimeoutError("request head too slow"), conn.remote),
                            "",
                        )
                    )
                    transport.close()
            elif now - conn.idle_since > self.idle_timeout:
                if transport.get_write_buffer_size():
                    # Still not read, after this long: dropped with the connection
                    # (close() would wait for the client forever).
                    transport.abort()
                else:
                    transport.close()
        self._sweeper = loop.call_later(self._tick, self._sweep)

    async def stop(self, grace: float) -> None:
        """Stop listening, close idle connections, let requests in flight finish for up
        to ``grace`` seconds, then cut what is left."""
        self.stopping = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            if not conn.busy and conn.transport is not None:
                conn.transport.close()
        deadline = asyncio.get_running_loop().time() + grace
        while any(c.busy for c in self.connections):
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.shut_down = True
            conn.abandon()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
