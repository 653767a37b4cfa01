"""The upstream leg: a lean HTTP/1.1 client with a keep-alive pool per upstream origin.

aiohttp's ClientSession is a general client: per request it builds a ClientRequest, works
out auto headers, cookies, auth, proxies, traces and timers, and it took about a third of
the proxy's CPU per request. The proxy knows its upstreams at start-up and forwards headers
it has already filtered, so it only needs to write a request head, stream a body and parse
the answer. Parsing is llhttp's (Node's parser, through httptools): strict about framing,
so a response with both Content-Length and Transfer-Encoding, a bad chunk or a control
byte in a header is an error, and the connection is dropped rather than reused.

    Pool.send() -> Connection (pooled or new) -> head + body written -> Response
    Response.iter_any() streams the body with backpressure; release() returns the
    connection to the pool only when the answer was complete and the upstream keeps it.

Pool is the real :class:`~proxy.http.transport.Transport`, Response its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Final, Protocol

import httptools
import structlog
from multidict import CIMultiDict

from .flow import WriteFlow
from .transport import BodyStream, UpstreamRequest

log = structlog.get_logger("proxy.client")

# An upstream answer's head is bounded: a 1 MB header block is an attack or a bug.
MAX_HEAD: Final = 64 * 1024
# Body bytes held for a client that reads slower than the upstream sends.
_HIGH_WATER: Final = 256 * 1024
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class UpstreamError(Exception):
    """The upstream connection failed or its answer broke HTTP/1.1."""


class UpstreamClosedError(UpstreamError):
    """The upstream closed the connection before its answer was complete."""


class UpstreamProtocolError(UpstreamError):
    """The upstream's answer was malformed (framing, header syntax, size)."""


class Dialer(Protocol):
    """Opens a pool's connections some other way than directly (egress.py: through a
    CONNECT tunnel), with the connection's protocol attached as a direct one would be."""

    async def connect(
        self,
        factory: Callable[[], Connection],
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        server_hostname: str | None,
    ) -> Connection: ...


class Response:
    """One upstream answer: status, headers, and a body read with :meth:`iter_any`."""

    __slots__ = ("_conn", "_released", "headers", "status")

    def __init__(self, conn: Connection, status: int, headers: CIMultiDict[str]) -> None:
        self._conn = conn
        self._released = False
        self.status = status
        self.headers = headers

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises UpstreamError or TimeoutError if it breaks off."""
        conn = self._conn
        while True:
            if conn.buffered:
                yield conn.take()
            elif conn.complete:
                return
            else:
                await conn.wait_body()

    def release(self) -> None:
        """Done with the answer: the connection goes back to the pool if it can. Only
        the first call counts: once pooled, the connection may carry another request."""
        if not self._released:
            self._released = True
            self._conn.finish()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._released:
            self._released = True
            self._conn.finish()


class Connection(WriteFlow):
    """One keep-alive connection; carries one request at a time."""

    __slots__ = (
        "_body_waiter",
        "_counted",
        "_eof",
        "_error",
        "_head",
        "_head_bytes",
        "_head_size",
        "_head_waiter",
        "_headers",
        "_interim",
        "_last",
        "_new_parser",
        "_parser",
        "_pool",
        "_reading_paused",
        "_sent",
        "_trailers",
        "_writer",
        "body",
        "buffered",
        "close_delimited",
        "closed",
        "complete",
        "idle_since",
        "in_use",
        "keep_alive",
        "read_timeout",
        "received",
        "transport",
    )

    def __init__(self, pool: Pool) -> None:
        super().__init__()
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.in_use = False
        self.idle_since = 0.0
        self._writer: asyncio.Task[None] | None = None
        self._counted = True  # holds one of the pool's places until forgotten
        self._new_parser = False
        self._eof = False  # the upstream ended its stream in order (see eof_received)
        self._reset()

    def _reset(self) -> None:
        self._head: bool = False  # a request of method HEAD is in flight
        self._head_size = 0  # header bytes parsed; -1 once the head is complete
        self._head_bytes = 0  # bytes received while the head (or trailers) was incomplete
        self._headers: list[tuple[bytes, bytes]] = []
        self._interim = False  # the head being parsed is a 1xx: the answer follows it
        self._trailers = False  # past a chunk's size line with no data since: trailers?
        self._head_waiter: asyncio.Future[Response] | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._last = 0.0
        self.read_timeout = 0.0
        self._reading_paused = False
        self._sent = False  # the whole request, body included, is written
        # Answer bytes not yet taken, merged (never one object per chunk): the first piece
        # as it came, later ones in a bytearray. Inline rather than flow.ByteQueue: two
        # method calls fewer on every answer.
        self.body: bytes | bytearray = b""
        self.buffered = 0
        self.complete = False
        self.close_delimited = False
        self.keep_alive = False
        self.received = False  # any byte of the answer arrived

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.in_use:
            # Bytes nobody asked for: the stream is out of step; never reuse it.
            self.close()
            return
        self._last = self._loop.time()
        self.received = True
        seen = self.buffered
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"malformed response: {exc}"))
            return
        if self._head_size >= 0 or (self._trailers and self.buffered == seen and not self.complete):
            # Still in the head (or a trailer section) after this read: bound what
            # httptools holds for a field still arriving.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._fail(UpstreamProtocolError("response head too large"))

    def eof_received(self) -> bool:
        self._eof = _orderly_end(self.transport)
        return False  # close the transport; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.in_use and not self.complete:
            if self.close_delimited and self._headers_done() and exc is None and self._eof:
                # The body ran until the upstream closed: its orderly end (a FIN; over TLS
                # a close_notify) ends it. A reset (exc), or a TLS stream that stops
                # without close_notify, does not: the answer was cut, and must reach the
                # client as cut.
                self._message_complete()
            else:
                self._fail(UpstreamClosedError("upstream closed the connection"))
        self._pool.forget(self)
        self.release_writers()  # the body writer sees self.closed and stops

    # -- parser callbacks (httptools) ---------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        value = value.rstrip(b" \t")  # trailing whitespace is not part of a value
        if self._head_size < 0:
            # A trailer field (after the last chunk): bounded like a head, and dropped.
            # The client's answer is framed by us, and a field added after the head was
            # sent would reach few clients; nginx drops them too.
            self._head_bytes += len(name) + len(value)
            if self._head_bytes > MAX_HEAD:
                raise UpstreamProtocolError("response trailer section too large")
            return
        self._head_size += len(name) + len(value)
        if self._head_size > MAX_HEAD:
            raise UpstreamProtocolError("response head too large")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                raise UpstreamProtocolError("upstream switched protocols unasked")
            # 1xx (100 Continue, 103 Early Hints): dropped; the answer follows.
            self._interim = True
            self._headers = []
            return
        headers: CIMultiDict[str] = CIMultiDict(
            (name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
            for name, value in self._headers
        )
        self._head_size = -1  # the head is done: stop counting
        bodyless = self._head or status in (204, 304)
        if not bodyless and "Content-Length" not in headers and "Transfer-Encoding" not in headers:
            self.close_delimited = True
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self, status, headers))
        if bodyless:
            self._message_complete()

    def on_chunk_header(self) -> None:
        self._trailers = True  # until data follows: after the last chunk, trailers come
        self._head_bytes = 0

    def on_body(self, body: bytes) -> None:
        self._trailers = False
        if self.complete:
            return  # a body after a HEAD answer: ignored, and the connection is not reused
        held = self.body
        if not held:
            self.body = body
        elif isinstance(held, bytearray):
            held += body
        else:
            self.body = bytearray(held)
            self.body += body
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._trailers = False
        if self._interim:
            # The end of a 1xx: the real answer's head comes next, counted afresh.
            self._interim = False
            self._head_size = 0
            self._head_bytes = 0
            return
        if not self.complete:
            self._message_complete()

    # -- the request ----------------------------------------------------------------------

    def _headers_done(self) -> bool:
        return self._head_size < 0

    def _message_complete(self) -> None:
        self.complete = True
        self.keep_alive = not self.close_delimited and self._parser.should_keep_alive()
        # A HEAD answer leaves llhttp waiting for a body that never comes: the next
        # request on this connection gets a fresh parser.
        self._new_parser = self._head
        self._wake()

    def _wake(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        for waiter in (self._head_waiter, self._body_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
        self.close()

    def _arm(self) -> None:
        """Start the read-timeout clock: the pool's watch fails this request after
        ``read_timeout`` of upstream silence while we wait for it (a slow client pausing
        the stream is not the upstream's fault)."""
        self._last = self._loop.time()

    def overdue(self, now: float) -> bool:
        head, body = self._head_waiter, self._body_waiter
        waiting = (head is not None and not head.done()) or (body is not None and not body.done())
        return waiting and now - self._last >= self.read_timeout

    def time_out(self) -> None:
        self._fail(TimeoutError("upstream silent longer than the read timeout"))

    async def send(
        self,
        head: bytes,
        body: bytes | BodyStream | None,
        chunked: bool,
        method: str,
        read_timeout: float,
    ) -> Response:
        self._reset()
        if self._new_parser:
            self._parser = httptools.HttpResponseParser(self)
            self._new_parser = False
        self.in_use = True
        self._head = method == "HEAD"
        self.read_timeout = read_timeout
        waiter: asyncio.Future[Response] = self._loop.create_future()
        self._head_waiter = waiter
        transport = self.transport
        assert transport is not None
        if body is None or isinstance(body, bytes):
            transport.write(head + body if body else head)
            self._sent = True
        else:
            transport.write(head)
            self._writer = self._loop.create_task(self._stream(body, chunked))
        self._arm()
        self._pool.watch(self)
        return await waiter

    async def _stream(self, body: BodyStream, chunked: bool) -> None:
        transport = self.transport
        assert transport is not None
        try:
            while True:
                chunk = await body.readany()
                if not chunk:
                    break
                if self.closed:
                    return
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await self.writable()
            if chunked and not self.closed:
                transport.write(b"0\r\n\r\n")
            self._sent = True
        except Exception as exc:  # the client's body broke off: the request can't complete
            self._fail(UpstreamClosedError(f"request body not sent whole: {type(exc).__name__}"))

    def take(self) -> bytes:
        held = self.body
        chunk = held if isinstance(held, bytes) else bytes(held)
        self.body = b""
        self.buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return chunk

    async def wait_body(self) -> None:
        if self._error is not None:
            raise self._error
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._body_waiter = waiter
        self._arm()
        await waiter

    def finish(self) -> None:
        """The caller is done with this request's answer."""
        if not self.in_use:
            return
        self.in_use = False
        self._pool.unwatch(self)
        writer = self._writer
        if writer is not None:
            self._writer = None
            if not writer.done():
                writer.cancel()
        if self.complete and self.keep_alive and self._sent and not self.closed:
            self.body = b""
            self.buffered = 0
            self._pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            self._pool.forget(self)


def _orderly_end(transport: asyncio.Transport | None) -> bool:
    """Did the upstream end its stream in order? Over plain TCP a FIN is that. Over TLS
    only close_notify is: asyncio reports a bare TCP FIN (a truncation, or a FIN injected
    on the path) as the same EOF, but the TLS object tells them apart: after close_notify
    it reads as ended (b""), after a bare FIN it still wants bytes."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return True
    try:
        return bool(ssl_object.read(1) == b"")
    except (ssl.SSLError, ValueError):
        return False


class Pool:
    """Keep-alive connections to one upstream origin (scheme, host, port, trust store),
    opened directly or, given a ``dialer``, through it (an egress proxy's tunnel)."""

    __slots__ = (
        "_count",
        "_dialer",
        "_host",
        "_idle",
        "_keepalive",
        "_limit",
        "_port",
        "_server_hostname",
        "_ssl",
        "_sweeper",
        "_tick",
        "_waiters",
        "_watched",
        "_watcher",
        "closed",
        "host_header",
    )

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        tls: ssl.SSLContext | None = None,
        *,
        limit: int = 1024,
        keepalive: float = 4.0,
        dialer: Dialer | None = None,
    ) -> None:
        bare = host[1:-1] if host.startswith("[") else host
        self._host = bare
        self._port = port
        self._ssl = (tls or ssl.create_default_context()) if scheme == "https" else None
        self._server_hostname = bare if scheme == "https" else None
        default = 443 if scheme == "https" else 80
        self.host_header = host if port == default else f"{host}:{port}"
        self._limit = limit
        self._keepalive = keepalive
        self._dialer = dialer
        self._idle: list[Connection] = []
        self._count = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        # Requests in flight, checked for upstream silence by one timer per pool rather
        # than a timer per request (a TimerHandle and a heap push each, ~3 us).
        self._watched: set[Connection] = set()
        self._watcher: asyncio.TimerHandle | None = None
        self._tick = 1.0
        self.closed = False

    async def send(
        self, request: UpstreamRequest, *, connect_timeout: float, read_timeout: float
    ) -> Response:
        """Send one request (see transport.py for its framing). The target goes out
        exactly as given."""
        method = request.method
        body = request.body
        length = request.length
        streamed = body is not None and not isinstance(body, bytes)
        lines = [f"{method} {request.path} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in request.headers.items())
        if length is not None:
            lines.append(f"Content-Length: {length}\r\n")
        elif streamed:
            lines.append("Transfer-Encoding: chunked\r\n")
        elif isinstance(body, bytes):
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        # Every line ends in exactly one CRLF: a CR, LF or NUL inside a name or value (a
        # token from a misbehaving issuer, say) would split the head into two requests.
        ends = len(lines) + 1  # the first piece holds the request line and Host
        if text.count("\n") != ends or text.count("\r") != ends or "\0" in text:
            raise UpstreamProtocolError("refusing to send a header with CR, LF or NUL")
        head = text.encode("utf-8", "surrogateescape")
        chunked = streamed and length is None
        reusable_retry = method in _IDEMPOTENT and not streamed
        while True:
            conn, reused = await self._acquire(connect_timeout)
            # For --log-level debug (a no-op call otherwise): is the pool doing its job?
            log.debug(
                "upstream_connection",
                upstream=self.host_header,
                reused=reused,
                idle=len(self._idle),
                open=self._count,
            )
            try:
                return await conn.send(head, body, chunked, method, read_timeout)
            except UpstreamClosedError:
                # A pooled connection the upstream closed as we picked it: safe to send
                # again only if nothing came back and the request may be repeated.
                conn.finish()
                if not (reused and not conn.received and reusable_retry):
                    raise
            except BaseException:
                conn.finish()
                raise

    async def _acquire(self, connect_timeout: float) -> tuple[Connection, bool]:
        conn = self._pooled()
        if conn is not None:
            return conn, True  # the common case: no timer, no await
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(connect_timeout):  # the pool wait counts as connecting
            while self._count >= self._limit:
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    waiter.cancel()
                conn = self._pooled()
                if conn is not None:
                    return conn, True
            self._count += 1
            try:
                if self._dialer is not None:
                    conn = await self._dialer.connect(
                        lambda: Connection(self),
                        self._host,
                        self._port,
                        self._ssl,
                        self._server_hostname,
                    )
                else:
                    _, conn = await loop.create_connection(
                        lambda: Connection(self),
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._server_hostname,
                    )
            except BaseException:
                self._count -= 1
                self._wake_one()
                raise
        return conn, False

    def _pooled(self) -> Connection | None:
        idle = self._idle
        if not idle:
            return None
        # time.monotonic(), not the loop's clock (the same clock): asyncio's
        # get_running_loop() makes a getpid system call, twice a request here.
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: warmest, least likely closed
            if not conn.closed and now - conn.idle_since < self._keepalive:
                return conn
            conn.close()
        return None

    def watch(self, conn: Connection) -> None:
        self._watched.add(conn)
        # Check ten times per read timeout: a timeout fires at most 10% late.
        tick = max(0.01, conn.read_timeout / 10)
        if tick < self._tick:
            self._tick = tick
            if self._watcher is not None:
                self._watcher.cancel()
                self._watcher = None
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().call_later(self._tick, self._check)

    def unwatch(self, conn: Connection) -> None:
        self._watched.discard(conn)

    def _check(self) -> None:
        self._watcher = None
        if not self._watched:
            return
        now = asyncio.get_running_loop().time()
        for conn in [c for c in self._watched if c.overdue(now)]:
            conn.time_out()
        if self._watched:
            self._watcher = asyncio.get_running_loop().call_later(self._tick, self._check)

    def put(self, conn: Connection) -> None:
        if self.closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()  # compared with _pooled's and _sweep's clock
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._keepalive, self._sweep)
        self._wake_one()

    def forget(self, conn: Connection) -> None:
        """A connection closed: free its place in the pool."""
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        if conn._counted:
            conn._counted = False
            self._count -= 1
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        """Close connections idle longer than keepalive: before the upstream's own idle
        timeout closes them under a request."""
        self._sweeper = None
        now = time.monotonic()
        for conn in [c for c in self._idle if now - c.idle_since >= self._keepalive]:
            conn.close()
        if self._idle:
            self._sweeper = asyncio.get_running_loop().call_later(self._keepalive, self._sweep)

    async def close(self) -> None:
        self.closed = True
        for timer in (self._sweeper, self._watcher):
            if timer is not None:
                timer.cancel()
        for conn in list(self._idle):
            conn.close()
        self._idle.clear()
