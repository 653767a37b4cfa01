"""A scripted raw upstream: records the exact bytes each connection brings and answers each
request with exact scripted bytes, misbehaviour included (partial writes, pauses, a FIN or a
reset at a chosen point).

An answer is a tuple of steps run in order: ``bytes`` are written (and drained), a ``float``
is a pause in seconds, ``FIN`` half-closes (the upstream then waits for the peer's close),
``CLOSE`` closes the connection (as a server does that keeps no idle connections), ``RST``
aborts with SO_LINGER 0. Answers are taken in arrival order of request heads over
all connections; a request past the script gets ``EXTRA``, and a request whose path ends in
``/probe`` gets ``PROBE`` without taking a place in the script or in ``seen``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

Step = bytes | float | Literal["FIN", "CLOSE", "RST"]
FIN: Final = "FIN"
CLOSE: Final = "CLOSE"
RST: Final = "RST"


@dataclass(frozen=True)
class Answer:
    """What the upstream sends for one request; ``at="head"`` starts it as soon as the
    request head is in (before the body is read), else once the request is complete."""

    steps: tuple[Step, ...]
    at: Literal["head", "end"] = "end"


EXTRA: Final = Answer((b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra",))
PROBE: Final = Answer((b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nprobe",))
_LIMIT: Final = 4 * 1024 * 1024


@dataclass
class Seen:
    """One request as it arrived; ``raw`` holds its bytes exactly."""

    connection: int
    raw: bytes = b""
    method: str = ""
    target: str = ""
    version: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)  # latin-1, values as sent
    framing: str = "none"  # "length N", "chunked" or "none"
    body: bytes = b""
    chunk_lines: list[bytes] = field(default_factory=list)  # size lines, extensions included
    trailers: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = False  # the whole request (framing satisfied) arrived
    abandoned: bool = False  # the proxy closed before its answer was written whole


class _Conn:
    __slots__ = ("closed_by_us", "index", "raw", "reader", "writer")

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.index = index
        self.reader = reader
        self.writer = writer
        self.raw = bytearray()
        self.closed_by_us = False

    async def until(self, marker: bytes) -> bytes:
        try:
            data = await self.reader.readuntil(marker)
        except asyncio.IncompleteReadError as exc:
            self.raw += exc.partial
            raise
        self.raw += data
        return data

    async def exactly(self, n: int) -> bytes:
        try:
            data = await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            self.raw += exc.partial
            raise
        self.raw += data
        return data


def header_fields(block: bytes) -> list[tuple[str, str]]:
    """The fields of a head or trailer block, names as sent."""
    out = []
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            # Leading whitespace is never part of a value; trailing whitespace is kept, so
            # a proxy that keeps or strips it shows here.
            out.append((name.decode("latin-1"), value.lstrip(b" \t").decode("latin-1")))
    return out


class ScriptedUpstream:
    """An asyncio TCP server on 127.0.0.1 that answers from a script and records."""

    def __init__(self, answers: tuple[Answer, ...]) -> None:
        self.answers = list(answers)
        self.seen: list[Seen] = []
        self.probes = 0
        self.connections: list[_Conn] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # answers being written
        self._handlers: set[asyncio.Task[object]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def settle(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until every answer has been written or abandoned."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while any(not t.done() for t in self._tasks):
                    await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in self.connections:
            conn.closed_by_us = True
            conn.writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        pending = [*self._tasks, *self._handlers]
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(len(self.connections), reader, writer)
        self.connections.append(conn)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        previous: asyncio.Task[None] | None = None
        try:
            while True:
                seen = Seen(conn.index)
                ready = asyncio.Event()  # set once the request is in whole

                def on_head(seen: Seen = seen, ready: asyncio.Event = ready) -> None:
                    nonlocal previous
                    answer = self._pick(seen)
                    previous = asyncio.get_running_loop().create_task(
                        self._answer(conn, seen, answer, previous, ready)
                    )
                    self._tasks.add(previous)

                mark = len(conn.raw)
                try:
                    more = await self._read(conn, seen, on_head, ready)
                finally:
                    seen.raw = bytes(conn.raw[mark:])
                if not more:
                    break
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            # The proxy closed (or broke) the connection: an answer not yet written whole
            # is abandoned (_answer marks it).
            if previous is not None and not previous.done():
                previous.cancel()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                conn.raw += await asyncio.wait_for(reader.read(), 0.05)
            writer.transport.abort()

    def _pick(self, seen: Seen) -> Answer:
        if seen.target.endswith("/probe"):
            self.probes += 1
            return PROBE
        self.seen.append(seen)
        return self.answers.pop(0) if self.answers else EXTRA

    async def _answer(
        self,
        conn: _Conn,
        seen: Seen,
        answer: Answer,
        before: asyncio.Task[None] | None,
        ready: asyncio.Event,
    ) -> None:
        try:
            if before is not None:
                with contextlib.suppress(Exception):
                    await before  # answers on one connection go out in order
            if answer.at == "end":
                await ready.wait()
            await self._play(conn, answer.steps)
        except ConnectionError:
            seen.abandoned = True
        except asyncio.CancelledError:
            if not conn.closed_by_us:
                seen.abandoned = True
            raise

    @staticmethod
    async def _play(conn: _Conn, steps: tuple[Step, ...]) -> None:
        writer = conn.writer
        for step in steps:
            if isinstance(step, bytes):
                writer.write(step)
                await writer.drain()
            elif isinstance(step, float):
                await asyncio.sleep(step)
            elif step == FIN:
                conn.closed_by_us = True
                writer.write_eof()
            elif step == CLOSE:
                conn.closed_by_us = True
                writer.close()
                return
            elif step == RST:
                conn.closed_by_us = True
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return

    async def _read(
        self, conn: _Conn, seen: Seen, on_head: Callable[[], None], ready: asyncio.Event
    ) -> bool:
        """Read one request into ``seen``; False when the connection ends."""
        try:
            head = await conn.until(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                seen.method = "<partial head>"
                self.seen.append(seen)
            return False
        line, _, rest = head[:-4].partition(b"\r\n")
        method, target, version = [*line.decode("latin-1").split(" ", 2), "", ""][:3]
        seen.method, seen.target, seen.version = method, target, version
        seen.headers = header_fields(rest)
        on_head()
        names = {k.lower(): v for k, v in seen.headers}
        try:
            if names.get("transfer-encoding", "").lower() == "chunked":
                seen.framing = "chunked"
                await self._chunks(conn, seen)
            elif "content-length" in names:
                seen.framing = f"length {names['content-length']}"
                seen.body = await conn.exactly(int(names["content-length"]))
        except asyncio.IncompleteReadError as exc:
            seen.body += exc.partial
            return False
        seen.complete = True
        ready.set()
        return True

    @staticmethod
    async def _chunks(conn: _Conn, seen: Seen) -> None:
        while True:
            size_line = await conn.until(b"\r\n")
            seen.chunk_lines.append(size_line[:-2])
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            seen.body += (await conn.exactly(size + 2))[:-2]
        while (line := await conn.until(b"\r\n")) != b"\r\n":
            seen.trailers += header_fields(line)


class RawUpstreams:
    """The ``raw_upstream`` fixture: started ScriptedUpstreams, closed when the test ends.
    Each argument is the answer to one request: its bytes, or its steps."""

    def __init__(self) -> None:
        self._made: list[ScriptedUpstream] = []

    async def __call__(self, *answers: bytes | list[Step]) -> ScriptedUpstream:
        upstream = ScriptedUpstream(
            tuple(Answer((a,) if isinstance(a, bytes) else tuple(a)) for a in answers)
        )
        await upstream.start()
        self._made.append(upstream)
        return upstream

    async def close(self) -> None:
        for upstream in self._made:
            await upstream.close()
