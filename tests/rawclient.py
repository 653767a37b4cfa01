"""A raw HTTP/1.1 client: bytes on a fresh socket, what comes back, and how the connection
ended. Every test that talks to a server below the HTTP libraries uses it.

``exchange`` sends bytes once and reads until the server closes; ``send`` and ``raw_http``
are its views for tests about the answer (its bytes, or the one answer parsed). ``talk``
runs the differential suite's client scripts.

A client script is a tuple of steps: ``bytes`` are written, a ``float`` is a pause,
``WaitFor(marker)`` waits until the received bytes hold ``marker`` (at most its timeout),
``SHUT`` half-closes (FIN, reading goes on), ``CLOSE`` closes the socket and ``ABORT``
resets it (SO_LINGER 0); after these two nothing more is read. In every request target
``/@/`` is replaced by the proxy's route prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from .rawpeer import header_fields

SHUT: Final = "SHUT"
CLOSE: Final = "CLOSE"
ABORT: Final = "ABORT"
PROBE: Final = b"GET /@/probe HTTP/1.1\r\nHost: t\r\n\r\n"
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] (\d{3})(?: [^\r\n]*)?")
_GRACE: Final = 0.05  # for a close that follows a complete answer at once
_PROBE_TIMEOUT: Final = 2.0


@dataclass(frozen=True)
class WaitFor:
    """Wait until the bytes received so far contain ``marker`` (or ``timeout`` passes)."""

    marker: bytes
    timeout: float = 1.0


ClientStep = bytes | float | WaitFor | Literal["SHUT", "CLOSE", "ABORT"]


@dataclass
class Response:
    """One final answer (and the interim ones before it) as the client read it."""

    interim: list[int]
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    complete: bool = False  # the body looks whole to a client (a FIN ends a close-delimited one)
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """The first value of field ``name`` (any case)."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)


@dataclass
class Parsed:
    responses: list[Response]
    stray: bytes  # bytes after the last response that do not (yet) make one
    error: str | None  # the stream broke HTTP/1.1 framing here

    def complete(self, count: int) -> bool:
        done = [r for r in self.responses if r.complete]
        return len(done) >= count


def _fields(block: bytes) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in header_fields(block)]


def parse(data: bytes, methods: Sequence[str], end: str | None) -> Parsed:
    """The answers in ``data``, the n-th read as the answer to ``methods[n]``; ``end`` is
    how the stream ended ("fin", "rst" or None while it is open)."""
    responses: list[Response] = []
    pos = 0
    for method in methods:
        interim: list[int] = []
        while True:
            cut = data.find(b"\r\n\r\n", pos)
            if cut < 0:
                return Parsed(responses, data[pos:], None)
            line, _, rest = data[pos:cut].partition(b"\r\n")
            match = _STATUS_LINE.fullmatch(line)
            if match is None:
                return Parsed(responses, data[pos:], f"not a status line: {line[:40]!r}")
            pos = cut + 4
            status = int(match[1])
            if status >= 200:
                break
            interim.append(status)
        response = Response(interim, status, _fields(rest))
        responses.append(response)
        length = response.header("content-length")
        coding = response.header("transfer-encoding")
        if method == "HEAD" or status in (204, 304):
            response.complete = True
        elif coding is not None and coding.lower().endswith("chunked"):
            pos, error = _chunks(data, pos, response)
            if error is not None:
                return Parsed(responses, data[pos:], error)
            if not response.complete:
                return Parsed(responses, b"", None)
        elif length is not None and length.isdigit():
            response.body = data[pos : pos + int(length)]
            pos += len(response.body)
            response.complete = len(response.body) == int(length)
            if not response.complete:
                return Parsed(responses, b"", None)
        else:
            response.body = data[pos:]
            response.complete = end == "fin"
            return Parsed(responses, b"", None)
    return Parsed(responses, data[pos:], None)


def _chunks(data: bytes, pos: int, response: Response) -> tuple[int, str | None]:
    body = bytearray()
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            response.body = bytes(body)
            return pos, None
        size_text = data[pos:eol].split(b";", 1)[0].strip()
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size_text):
            response.body = bytes(body)
            return pos, f"not a chunk size: {data[pos:eol][:40]!r}"
        size = int(size_text, 16)
        if size == 0:
            response.body = bytes(body)
            tail = eol + 2
            if data[tail : tail + 2] == b"\r\n":
                response.complete = True
                return tail + 2, None
            end = data.find(b"\r\n\r\n", tail)
            if end < 0:
                return pos, None
            response.trailers = _fields(data[tail:end])
            response.complete = True
            return end + 4, None
        start = eol + 2
        if len(data) < start + size + 2:
            body += data[start : start + size]
            response.body = bytes(body)
            return pos, None
        if data[start + size : start + size + 2] != b"\r\n":
            response.body = bytes(body)
            return start + size, "chunk data not followed by CRLF"
        body += data[start : start + size]
        pos = start + size + 2


@dataclass
class ClientView:
    """What one client connection saw."""

    parsed: Parsed
    end: Literal["fin", "rst", "open", "client"]  # "client": the script closed it
    usable: bool  # a further request on it got its answer
    raw: bytes


class _Reader:
    __slots__ = ("_changed", "data", "end")

    def __init__(self) -> None:
        self.data = bytearray()
        self.end: Literal["fin", "rst"] | None = None
        self._changed = asyncio.Event()

    async def run(self, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(65536):
                self.data += chunk
                self._changed.set()
            self.end = "fin"
        except ConnectionResetError:
            self.end = "rst"
        finally:
            self._changed.set()

    async def until(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait for ``ready()`` or the end of the stream, at most ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not ready() and self.end is None:
                    self._changed.clear()
                    await self._changed.wait()
        return ready()

    async def holds(self, marker: bytes, timeout: float) -> bool:
        return await self.until(lambda: marker in self.data, timeout)


Where = str | tuple[str, int]  # a server's URL (http://host:port) or its address
STILL_OPEN: Final = b"<still open>"


@dataclass(frozen=True, slots=True)
class Received:
    """What came back on one connection, and how it ended: "fin" a clean close, "rst" a
    reset, "open" still open when the wait ran out."""

    data: bytes
    end: Literal["fin", "rst", "open"]


async def exchange(where: Where, data: bytes, *, timeout: float = 5.0) -> Received:
    """Send ``data`` on a fresh connection and read until the server closes it, resets it,
    or ``timeout`` passes. Reading starts before writing, so an answer streaming back never
    blocks a large request; and there is no half-close, since the proxy takes a client's
    FIN as the client leaving (and cancels its request), as nginx does."""
    if isinstance(where, str):
        host, port = where.removeprefix("http://").rsplit(":", 1)
        where = (host, int(port))
    reader, writer = await asyncio.open_connection(*where)
    incoming = _Reader()
    reading = asyncio.create_task(incoming.run(reader))
    try:
        with contextlib.suppress(ConnectionError):  # the server may answer and close first
            writer.write(data)
            await writer.drain()
        await incoming.until(lambda: False, timeout)
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        writer.close()
    return Received(bytes(incoming.data), incoming.end or "open")


async def send(where: Where, data: bytes, *, timeout: float = 5.0) -> bytes:
    """The bytes an exchange got back, for tests about the answers: a reset fails the test,
    a connection still open after ``timeout`` gives ``STILL_OPEN``."""
    received = await exchange(where, data, timeout=timeout)
    if received.end == "rst":
        raise ConnectionResetError(f"reset by the server after {received.data[:300]!r}")
    return STILL_OPEN if received.end == "open" else received.data


async def raw_http(where: Where, data: bytes, *, timeout: float = 5.0) -> Response:
    """The answer to one request that asks the server to close; a reset, a connection
    still open after ``timeout``, or bytes that are not one whole answer fail the test."""
    received = await exchange(where, data, timeout=timeout)
    assert received.end == "fin", received
    method = data.split(b" ", 1)[0].decode("latin-1")
    parsed = parse(received.data, [method], "fin")
    assert parsed.error is None, parsed
    assert parsed.complete(1), parsed
    return parsed.responses[0]


async def talk(
    port: int, prefix: str, steps: Sequence[ClientStep], methods: Sequence[str], deadline: float
) -> ClientView:
    """Run one client script against 127.0.0.1:``port``; ``methods`` are those of the
    requests it sends, in order. When all are answered on a connection still open, one
    more GET (answered ``probe`` by the upstream) tells whether the connection is usable."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    route = f" {prefix}/".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    incoming = _Reader()
    reading = loop.create_task(incoming.run(reader))
    n = len(methods)

    def now_parsed(count: int) -> Parsed:
        return parse(bytes(incoming.data), [*methods, "GET"][:count], incoming.end)

    def settled(count: int) -> Callable[[], bool]:
        def check() -> bool:
            parsed = now_parsed(count)
            return parsed.error is not None or parsed.complete(count)

        return check

    end: Literal["fin", "rst", "open", "client"] | None = None
    usable = False
    probed = False
    try:
        for step in steps:
            if isinstance(step, bytes):
                with contextlib.suppress(ConnectionError):
                    writer.write(step.replace(b" /@/", route))
                    await writer.drain()
            elif isinstance(step, float):
                await asyncio.sleep(step)
            elif isinstance(step, WaitFor):
                await incoming.holds(step.marker, step.timeout)
            elif step == SHUT:
                writer.write_eof()
            else:
                if step == ABORT:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                end = "client"
                break
        if end is None:
            left = deadline - (loop.time() - started)
            answered = await incoming.until(settled(n), max(left, 0.0))
            parsed = now_parsed(n)
            if answered and parsed.error is None:
                last = parsed.responses[-1] if parsed.responses else None
                closing = last is not None and "close" in (last.header("connection") or "")
                await incoming.until(lambda: False, 1.0 if closing else _GRACE)
                if incoming.end is None and not closing:
                    probed = True
                    with contextlib.suppress(ConnectionError):
                        writer.write(PROBE.replace(b" /@/", route))
                        await writer.drain()
                    await incoming.until(settled(n + 1), _PROBE_TIMEOUT)
                    after = now_parsed(n + 1)
                    if after.error is None and after.complete(n + 1):
                        probe = after.responses[n]
                        usable = (probe.status, probe.body, probe.interim) == (200, b"probe", [])
            end = incoming.end or "open"
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        writer.transport.abort()
    parsed = now_parsed(n + 1 if probed else n)
    if probed:
        # The probe's answer is not the case's: only bytes that no answer explains stay.
        del parsed.responses[n:]
    return ClientView(parsed, end, usable, bytes(incoming.data))
