"""What one hostile connection can make the proxy process hold is bounded in bytes, not in
messages or chunks (PITFALLS.md 31).

Each pattern runs against its own `python -m proxy serve` process; its resident memory
(VmRSS, sampled, and the peak VmHWM reset after the baseline) is compared with a baseline
taken after warm-up requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httptools
import pytest

from .processes import ProxyProcess, start_proxy
from .rawclient import send

# What one connection may add to the proxy's resident memory, whatever it sends. The
# README states the bound (Connections): held request bytes up to 256 KiB plus one 256 KiB
# read, a body held for a replay up to retry.max_body (1 MiB), an answer's 256 KiB plus
# one read, and the transports' write buffers: about 2 MiB. Measured growth stays under
# 2 MiB in every pattern; 4 MiB leaves room for allocator noise and Python's arenas, far
# under the 100+ MiB that one bytes object per 2-byte chunk cost before.
MAX_GROWTH_KIB: Final = 4 * 1024

WIRE_BYTES: Final = 15_000_000  # what each pattern puts on the wire
# 2 bytes of body in 7 on the wire: the worst case, as CPython shares the 1-byte bytes
# objects a parser hands out for 1-byte chunks.
TINY_CHUNK: Final = b"2\r\nxy\r\n"
SLOW_SECONDS: Final = 4.0  # how long the upstream holds the request that blocks a pipeline
# How long a peer stops reading, so that what the proxy buffers for it fills to its bound.
STALL_SECONDS: Final = 1.0
# Each pipelined body stays under the 256 KiB at which today's server pauses for one body,
# so only the 16-request pipeline limit stops reading: the worst case for a count bound.
PIPELINED: Final = 18
MAX_HEAD: Final = 64 * 1024  # the request-head limit (README: 431 past it)
HEAD_FIELDS: Final = 100
PATTERN_DEADLINE: Final = 60.0
SAMPLE_EVERY: Final = 0.02

H: Final = b"Host: m\r\n"


# -- the upstream -------------------------------------------------------------------------


class _Wire:
    """llhttp callbacks for one upstream connection. ``/echo`` answers as it reads: each
    piece of the body goes straight back as a chunk."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.parser = httptools.HttpRequestParser(self)
        self.target = b""
        self.echo = False
        self.stall = False
        self.size = 0
        self.done: list[tuple[bytes, int]] = []

    def on_message_begin(self) -> None:
        self.target = b""
        self.size = 0

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_headers_complete(self) -> None:
        self.stall = self.target.endswith(b"/stall")
        self.echo = self.target.endswith(b"/echo")
        if self.echo:
            self.writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.echo:
            self.writer.write(b"%x\r\n%b\r\n" % (len(body), body))

    def on_message_complete(self) -> None:
        if self.echo:
            self.writer.write(b"0\r\n\r\n")
        else:
            self.done.append((self.target, self.size))


class MemoryUpstream:
    """A raw HTTP/1.1 upstream on 127.0.0.1: ``/slow`` answers after SLOW_SECONDS,
    ``/tiny`` answers WIRE_BYTES of 2-byte chunks, ``/echo`` echoes the body as it comes,
    ``/stall`` reads nothing for STALL_SECONDS after its head; anything else (``/stall``
    too) answers with the size of the body it got."""

    def __init__(self) -> None:
        self.port = 0
        self.connections: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        wire = _Wire(writer)
        self.connections.add(writer)
        try:
            while data := await reader.read(1 << 18):
                wire.parser.feed_data(data)
                await writer.drain()  # an echo waits for its reader
                if wire.stall:
                    wire.stall = False
                    await asyncio.sleep(STALL_SECONDS)
                while wire.done:
                    await self._answer(*wire.done.pop(0), writer)
        except (ConnectionError, httptools.HttpParserError):
            pass
        finally:
            self.connections.discard(writer)
            writer.close()

    async def _answer(self, target: bytes, size: int, writer: asyncio.StreamWriter) -> None:
        if target.endswith(b"/slow"):
            await asyncio.sleep(SLOW_SECONDS)
        if target.endswith(b"/tiny"):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            block = TINY_CHUNK * (256 * 1024 // len(TINY_CHUNK))  # 37449 chunks
            for _ in range(WIRE_BYTES // len(block)):
                writer.write(block)
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        else:
            body = b"%d" % size
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        await writer.drain()


@dataclass
class Memory:
    """A proxy process in front of a MemoryUpstream, with its log drained (a full pipe
    would block it)."""

    proxy: ProxyProcess
    upstream: MemoryUpstream

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.proxy.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)


async def _drain_log(proxy: ProxyProcess) -> None:
    assert proxy.process.stdout is not None
    while line := await proxy.process.stdout.readline():
        proxy.lines.append(line.decode(errors="replace").rstrip("\n"))


@pytest.fixture
async def memory(tmp_path: Path) -> AsyncIterator[Memory]:
    upstream = MemoryUpstream()
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    spool = tmp_path / "spool"
    spool.mkdir()
    config = tmp_path / "routes.toml"
    config.write_text(
        f'[server]\nspool_dir = "{spool}"\n'
        f'[[routes]]\nprefix = "/a"\nupstream = "{upstream.url}"\n'
        f'[[routes]]\nprefix = "/u"\nupstream = "{upstream.url}"\nrequest_buffering = false\n'
    )
    proxy = await start_proxy(config)
    drain = asyncio.create_task(_drain_log(proxy))
    try:
        yield Memory(proxy, upstream)
    finally:
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
        await proxy.stop()
        server.close()
        for writer in list(upstream.connections):
            writer.transport.abort()
        await asyncio.sleep(0)


# -- measuring ----------------------------------------------------------------------------


async def _warm_up(memory: Memory) -> None:
    """Every path a pattern takes, once, small: the baseline holds what any process that
    has served these requests holds."""
    chunked = b"Transfer-Encoding: chunked\r\n\r\n" + TINY_CHUNK * 1000 + b"0\r\n\r\n"
    warm = (
        b"GET /a/warm HTTP/1.1\r\n" + H + b"\r\n"
        b"POST /a/up HTTP/1.1\r\n" + H + chunked + b"POST /u/up HTTP/1.1\r\n" + H + chunked
    )
    warm += b"POST /a/echo HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\n" + b"e" * 100
    warm += b"GET /a/x HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
    answers = await send(memory.address, warm, timeout=10)
    assert answers.count(b"HTTP/1.1 200 OK") == 5, answers[:500]


def _reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux clear_refs "5")."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def _growth_kib(memory: Memory, pattern: Callable[[], Awaitable[None]]) -> int:
    """Run ``pattern`` and return the proxy's largest RSS over its baseline, in KiB."""
    proxy = memory.proxy
    await _warm_up(memory)
    baseline = proxy.rss_kib()
    peak_reset = _reset_peak(proxy.pid)
    highest = baseline

    async def sample() -> None:
        nonlocal highest
        while True:
            highest = max(highest, proxy.rss_kib())
            await asyncio.sleep(SAMPLE_EVERY)

    sampler = asyncio.create_task(sample())
    try:
        async with asyncio.timeout(PATTERN_DEADLINE):
            await pattern()
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    if peak_reset:
        highest = max(highest, proxy.rss_kib("VmHWM"))
    return highest - baseline


def _report(name: str, growth_kib: int) -> str:
    line = f"{name}: proxy RSS grew {growth_kib} KiB (bound {MAX_GROWTH_KIB} KiB)"
    print(line)
    return line


def _statuses(raw: bytes) -> list[bytes]:
    """Status codes of the answers in a byte stream (no body here holds a status line)."""
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)


class _Count:
    def __init__(self) -> None:
        self.size = 0
        self.complete = False

    def on_body(self, body: bytes) -> None:
        self.size += len(body)

    def on_message_complete(self) -> None:
        self.complete = True


def _body_size(raw: bytes) -> int | None:
    """Bytes of body in one answer, None if it did not end."""
    count = _Count()
    httptools.HttpResponseParser(count).feed_data(raw)
    return count.size if count.complete else None


# -- the patterns -------------------------------------------------------------------------


async def test_tiny_chunks_pipelined_behind_a_slow_request(memory: Memory) -> None:
    """Chunked bodies of 2-byte chunks, pipelined behind a request the upstream holds for
    seconds, cost the proxy at most MAX_GROWTH_KIB, not a bytes object per chunk."""
    per_request = WIRE_BYTES // PIPELINED
    chunks = per_request // len(TINY_CHUNK)
    post = b"POST /a/up HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
    body = b"\r\n" + TINY_CHUNK * chunks + b"0\r\n\r\n"
    data = b"GET /a/slow HTTP/1.1\r\n" + H + b"\r\n"
    data += (post + body) * (PIPELINED - 1) + post + b"Connection: close\r\n" + body
    answers = b""

    async def pattern() -> None:
        nonlocal answers
        answers = await send(memory.address, data, timeout=PATTERN_DEADLINE)

    growth = await _growth_kib(memory, pattern)
    message = _report(f"{len(data)} bytes of 2-byte chunks pipelined behind /slow", growth)
    assert _statuses(answers) == [b"200"] * (PIPELINED + 1), message
    assert answers.endswith(b"%d" % (chunks * 2)), message
    assert growth < MAX_GROWTH_KIB, message


async def test_maximal_heads_pipelined_behind_a_slow_request(memory: Memory) -> None:
    """Requests whose heads are just under the 64 KiB limit, pipelined behind a slow one,
    cost the proxy at most MAX_GROWTH_KIB."""
    value = b"v" * ((MAX_HEAD - 200) // HEAD_FIELDS - len(b"X-Field-000: \r\n"))
    fields = b"".join(b"X-Field-%03d: %b\r\n" % (i, value) for i in range(HEAD_FIELDS))
    head = b"GET /a/x HTTP/1.1\r\n" + H + fields
    count = WIRE_BYTES // len(head)
    data = b"GET /a/slow HTTP/1.1\r\n" + H + b"\r\n"
    data += (head + b"\r\n") * (count - 1) + head + b"Connection: close\r\n\r\n"
    answers = b""

    async def pattern() -> None:
        nonlocal answers
        answers = await send(memory.address, data, timeout=PATTERN_DEADLINE)

    growth = await _growth_kib(memory, pattern)
    message = _report(f"{count} pipelined heads of {len(head)} bytes behind /slow", growth)
    assert _statuses(answers) == [b"200"] * (count + 1), message
    assert growth < MAX_GROWTH_KIB, message


@pytest.mark.parametrize("prefix", ["/a", "/u"], ids=["buffered", "unbuffered"])
async def test_chunked_upload_of_tiny_chunks(memory: Memory, prefix: str) -> None:
    """One chunked upload of 2-byte chunks to an upstream that stops reading for a while
    costs the proxy at most MAX_GROWTH_KIB, whether the route buffers it (spooled to disk)
    or streams it."""
    chunks = WIRE_BYTES // len(TINY_CHUNK)
    data = b"POST %b/stall HTTP/1.1\r\n" % prefix.encode() + H
    data += b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    data += TINY_CHUNK * chunks + b"0\r\n\r\n"
    answers = b""

    async def pattern() -> None:
        nonlocal answers
        answers = await send(memory.address, data, timeout=PATTERN_DEADLINE)

    growth = await _growth_kib(memory, pattern)
    message = _report(f"{len(data)} bytes of 2-byte chunks up {prefix}", growth)
    assert _statuses(answers) == [b"200"], message
    assert answers.endswith(b"%d" % (chunks * 2)), message
    assert growth < MAX_GROWTH_KIB, message


async def _send_without_reading(memory: Memory, head: bytes, block: bytes) -> tuple[int, int]:
    """Send ``head``, then ``block`` again and again (up to WIRE_BYTES) on a connection
    with a small receive window that never reads, until the proxy takes nothing for a
    second: (bytes sent, the proxy's RSS growth in KiB)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.setblocking(False)
    sent = 0

    async def pattern() -> None:
        nonlocal sent
        await loop.sock_connect(sock, memory.address)
        await loop.sock_sendall(sock, head)
        stalled_since = time.monotonic()
        while sent < WIRE_BYTES and time.monotonic() - stalled_since < 1.0:
            try:
                n = sock.send(block[: WIRE_BYTES - sent])
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            sent += n
            stalled_since = time.monotonic()
            await asyncio.sleep(0)
        await asyncio.sleep(0.5)  # what the proxy holds now, it holds for the reader

    try:
        growth = await _growth_kib(memory, pattern)
    finally:
        sock.close()
    return sent, growth


async def test_client_that_sends_a_large_body_and_never_reads(memory: Memory) -> None:
    """A client that streams a large body to an upstream echoing it back, and reads none of
    the answer, holds the proxy to at most MAX_GROWTH_KIB: backpressure reaches it."""
    head = b"POST /a/echo HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % WIRE_BYTES
    sent, growth = await _send_without_reading(memory, head, b"b" * 65536)
    message = _report(f"{sent} bytes sent to /echo, none of the answer read", growth)
    assert growth < MAX_GROWTH_KIB, message


@pytest.mark.parametrize(
    "request_line",
    [b"GET /nowhere HTTP/1.1", b"GET /-/metrics HTTP/1.1", b"GET /a/empty HTTP/1.1"],
    ids=["our-404", "metrics", "upstream-answer"],
)
async def test_pipelined_requests_from_a_client_that_never_reads(
    memory: Memory, request_line: bytes
) -> None:
    """Requests pipelined without end by a client that reads none of the answers (the
    proxy's own 404s, /-/metrics, small upstream answers) hold the proxy to at most
    MAX_GROWTH_KIB: the next request is answered only once the client reads."""
    block = (request_line + b"\r\n" + H + b"\r\n") * 1000
    sent, growth = await _send_without_reading(memory, b"", block)
    message = _report(f"{sent} bytes of pipelined {request_line!r}, nothing read", growth)
    assert growth < MAX_GROWTH_KIB, message
    assert sent < WIRE_BYTES  # the proxy stopped taking requests: backpressure


async def test_tiny_chunked_answer_to_a_slow_reader(memory: Memory) -> None:
    """An answer of 2-byte chunks to a client that reads nothing for a while, then slowly,
    costs the proxy at most MAX_GROWTH_KIB."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.setblocking(False)
    received = bytearray()

    async def pattern() -> None:
        await loop.sock_connect(sock, memory.address)
        await loop.sock_sendall(
            sock, b"GET /a/tiny HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
        )
        await asyncio.sleep(STALL_SECONDS)
        while chunk := await loop.sock_recv(sock, 16384):
            received.extend(chunk)
            await asyncio.sleep(0.003)

    try:
        growth = await _growth_kib(memory, pattern)
    finally:
        sock.close()
    message = _report(f"{len(received)} bytes of an answer of 2-byte chunks read slowly", growth)
    assert _statuses(bytes(received[:20])) == [b"200"], message
    chunks = WIRE_BYTES // len(TINY_CHUNK) // 37449 * 37449  # in whole 256 KiB writes
    assert _body_size(bytes(received)) == chunks * 2, message
    assert growth < MAX_GROWTH_KIB, message
