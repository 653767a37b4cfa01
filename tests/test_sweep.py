"""Bodies of every size around every buffer and limit cross the proxy byte for byte, both
ways, however the sender splits its writes and however the message is framed.

Each test runs many cases on one proxy; each case has its own deadline, so a hang fails
with the case named instead of stalling the run. Bytes are checked against a pattern in
which every 4-byte word holds its own offset: a lost, doubled or reordered piece is found,
and where (PITFALLS.md 36).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from array import array
from asyncio import selector_events
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httptools
import pytest

from proxy import bodies
from proxy.config.model import RetryConfig
from proxy.http import client, server

from .conftest import LEAK_WATCH, ProxyFactory, Upstream

WRITE_PIECE: Final = 16 * 1024

# Every size at which a buffer or limit of the wire layer changes what happens to a body.
# When the wire layer changes, update this table: each name must say where its value lives,
# and constants are imported, so a renamed or removed one fails here at import.
THRESHOLDS: Final[dict[str, int]] = {
    "proxy.http.server.BUFFER_HIGH_WATER: bytes a connection holds before it pauses reading": (
        server.BUFFER_HIGH_WATER
    ),
    "proxy.http.server.MAX_HEAD: a request head (queued heads count against the buffer too)": (
        server.MAX_HEAD
    ),
    "proxy.http.client._HIGH_WATER: answer body held before the upstream leg pauses reading": (
        client._HIGH_WATER
    ),
    "proxy.bodies.READ_AHEAD: chunked body in memory on a route that cannot replay": (
        bodies.READ_AHEAD
    ),
    "proxy.bodies._SPOOL_READ: block read back from a spooled body": bodies._SPOOL_READ,
    "RetryConfig.max_body default: bodies held for a replay (in memory)": RetryConfig().max_body,
    # A private class: typeshed leaves it out.
    "asyncio _SelectorSocketTransport.max_size: bytes per recv": (
        selector_events._SelectorSocketTransport.max_size  # type: ignore[attr-defined]
    ),
    "WRITE_PIECE: the 16 KiB write piece of this file's senders": WRITE_PIECE,
}

KIB: Final = 1024
SIZES: Final = sorted(
    {0, 1}
    | {(1 << bit) + d for bit in range(10, 24) for d in (-1, 0, 1)}  # 1 KiB .. 8 MiB
    | {t + d for t in THRESHOLDS.values() for d in (-1, 0, 1)}
)
# Pieces of 1-7 bytes cost two loop turns each: only small bodies are sent that way whole,
# and around each threshold only the last TAIL bytes are.
TINY_SIZES: Final = [0, 1, 2, 7, KIB - 1, KIB, KIB + 1, 4 * KIB + 1]
TAIL: Final = 96
TAIL_SIZES: Final = sorted({t + d for t in THRESHOLDS.values() for d in (-1, 0, 1)})

# How a sender splits what it writes (head and body): one write; the head, then 16 KiB
# pieces; 1-7 byte pieces with a pause after each; one write but the last TAIL bytes in
# 1-7 byte pieces. Chunked bodies use chunks of the whole body, 16 KiB, 1-9 bytes and
# 16 KiB respectively.
PATTERNS: Final = {"one": SIZES, "16k": SIZES, "tiny": TINY_SIZES, "tiny-tail": TAIL_SIZES}

# A case may take this long, plus a second per DEADLINE_RATE bytes; past it, it has hung.
CASE_DEADLINE: Final = 2.0
DEADLINE_RATE: Final = 4 * 1024 * 1024
# Stop a test after this many hung cases: each costs its whole deadline.
MAX_HANGS: Final = 6

ROUTE_KINDS: Final = {
    # streams every body
    "stream": "retry = { attempts = 1 }",
    # bodies up to retry.max_body held for a 429 retry
    "replay": "",
    # bodies up to retry.max_body held for a 401 replay with a fresh token
    "auth": 'auth = "a"\nretry = { attempts = 1 }',
    # chunked bodies stream after the read-ahead instead of being read whole
    "unbuffered": "request_buffering = false\nretry = { attempts = 1 }",
}
SECRET: Final = "sweep-secret-1"
LEAK_WATCH.update({SECRET})


def _pattern(size: int) -> bytes:
    return array("I", range(0, size + 4, 4)).tobytes()[:size]


PATTERN: Final = _pattern(max(SIZES) + 4)
_SHA: dict[int, str] = {}


def expected_sha(size: int) -> str:
    if size not in _SHA:
        _SHA[size] = hashlib.sha256(PATTERN[:size]).hexdigest()
    return _SHA[size]


class Check:
    """Body bytes compared with the pattern as they arrive: length, SHA-256, first wrong
    offset."""

    __slots__ = ("sha", "size", "wrong_at")

    def __init__(self) -> None:
        self.size = 0
        self.sha = hashlib.sha256()
        self.wrong_at: int | None = None

    def feed(self, data: bytes) -> None:
        end = self.size + len(data)
        if self.wrong_at is None:
            expected = PATTERN[self.size : end]
            if expected != data:
                same = next(
                    (i for i, (a, b) in enumerate(zip(expected, data, strict=False)) if a != b),
                    min(len(expected), len(data)),
                )
                self.wrong_at = self.size + same
        self.sha.update(data)
        self.size = end

    def problem(self, size: int) -> str | None:
        if self.size == size and self.sha.hexdigest() == expected_sha(size):
            return None
        return f"got {self.size} bytes, first wrong byte at {self.wrong_at}"


def encode(body: bytes, framing: str, pattern: str) -> bytes:
    """The body as it goes on the wire (framing "chunked": chunks sized by pattern)."""
    if framing != "chunked":
        return body
    if pattern == "one":
        sizes: Iterator[int] = iter([len(body)] if body else [])
    elif pattern == "tiny":
        sizes = (1 + i % 9 for i in range(len(body)))
    else:
        sizes = (WRITE_PIECE for _ in range(len(body)))
    out = bytearray()
    offset = 0
    for n in sizes:
        if offset >= len(body):
            break
        piece = body[offset : offset + n]
        out += b"%x\r\n%b\r\n" % (len(piece), piece)
        offset += n
    out += b"0\r\n\r\n"
    return bytes(out)


def pieces(head: bytes, wire_body: bytes, pattern: str) -> list[bytes]:
    if pattern == "one":
        return [head + wire_body]
    if pattern == "16k":
        return [head] + [
            wire_body[i : i + WRITE_PIECE] for i in range(0, len(wire_body), WRITE_PIECE)
        ]
    whole = head + wire_body
    start = 0 if pattern == "tiny" else max(0, len(whole) - TAIL)
    out = [whole[:start]] if start else []
    i = 0
    while start < len(whole):
        n = 1 + i % 7
        out.append(whole[start : start + n])
        start += n
        i += 1
    return out


async def send(writer: asyncio.StreamWriter, parts: list[bytes], pattern: str) -> None:
    slow = pattern in ("tiny", "tiny-tail")
    for i, part in enumerate(parts):
        writer.write(part)
        await writer.drain()
        if slow and len(part) < 8:
            # Two loop turns: the peer (in this loop) reads this piece before the next
            # is sent; now and then a real pause as well.
            await asyncio.sleep(0.001 if i % 64 == 63 else 0)
            await asyncio.sleep(0)


def test_the_check_finds_a_lost_or_reordered_piece() -> None:
    """The pattern tells a body with two 16 KiB pieces swapped or one byte lost from the
    real one, and says where."""
    body = PATTERN[: 4 * WRITE_PIECE]
    swapped = body[:WRITE_PIECE] + body[2 * WRITE_PIECE : 3 * WRITE_PIECE]
    swapped += body[WRITE_PIECE : 2 * WRITE_PIECE] + body[3 * WRITE_PIECE :]
    # Offsets 16384 and 32768 share their low byte: the first wrong one is the next.
    for wrong, at in ((swapped, WRITE_PIECE + 1), (body[:99] + body[100:], 99), (body, None)):
        check = Check()
        check.feed(wrong)
        assert check.wrong_at == at
        assert (check.problem(len(body)) is None) == (at is None)


# -- the upstream -------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the upstream parsed it."""

    target: bytes = b""
    framing: str = "none"
    check: Check = field(default_factory=Check)


class _RequestWire:
    """llhttp callbacks for one upstream connection."""

    def __init__(self, upstream: RawUpstream) -> None:
        self.upstream = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.current = Seen()
        self.done: list[Seen] = []

    def on_message_begin(self) -> None:
        self.current = Seen()
        self.upstream.last = self.current

    def on_url(self, url: bytes) -> None:
        self.current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length":
            self.current.framing = "length " + value.decode()
        elif name == b"transfer-encoding":
            self.current.framing = value.decode()

    def on_body(self, body: bytes) -> None:
        self.current.check.feed(body)

    def on_message_complete(self) -> None:
        self.done.append(self.current)


class RawUpstream:
    """An HTTP/1.1 upstream on 127.0.0.1 over llhttp. ``/up`` answers with what its body
    was (length, SHA-256, first wrong byte, framing); ``/dl/SIZE/FRAMING/PATTERN`` answers
    SIZE bytes of the pattern, framed (length, chunked, close) and written as told."""

    def __init__(self) -> None:
        self.port = 0
        self.last: Seen | None = None
        self.errors: list[str] = []
        self.connections: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        wire = _RequestWire(self)
        self.connections.add(writer)
        try:
            while data := await reader.read(1 << 18):
                wire.parser.feed_data(data)
                while wire.done:
                    if not await self._answer(wire.done.pop(0), writer):
                        return
        except httptools.HttpParserError as exc:
            self.errors.append(f"unparsable request from the proxy: {exc}")
        except ConnectionError:
            pass
        finally:
            self.connections.discard(writer)
            writer.close()

    async def _answer(self, seen: Seen, writer: asyncio.StreamWriter) -> bool:
        parts = seen.target.decode().strip("/").split("/")
        if parts[0] == "up":
            check = seen.check
            body = json.dumps(
                {
                    "size": check.size,
                    "sha256": check.sha.hexdigest(),
                    "wrong_at": check.wrong_at,
                    "framing": seen.framing,
                }
            ).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
            await writer.drain()
            return True
        size, framing, pattern = int(parts[1]), parts[2], parts[3]
        head = b"HTTP/1.1 200 OK\r\n"
        if framing == "length":
            head += b"Content-Length: %d\r\n" % size
        elif framing == "chunked":
            head += b"Transfer-Encoding: chunked\r\n"
        head += b"\r\n"
        await send(writer, pieces(head, encode(PATTERN[:size], framing, pattern), pattern), pattern)
        return framing != "close"  # a close-delimited body ends where the connection does


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream()
    srv = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    upstream.port = srv.sockets[0].getsockname()[1]
    yield upstream
    srv.close()
    # Ended by their peer, not cancelled with the loop (asyncio logs a cancelled one).
    for writer in list(upstream.connections):
        writer.transport.abort()
    for _ in range(3):
        await asyncio.sleep(0)


# -- the client ---------------------------------------------------------------------------


class _ResponseWire:
    """llhttp callbacks for one answer on a client connection."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.check = Check()
        self.text = b""
        self.complete = False

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.check.feed(body)
        if len(self.text) < 4096:
            self.text += body[:4096]

    def on_message_complete(self) -> None:
        self.complete = True


class Client:
    """Keep-alive connections to the proxy, one at a time; a new one after a close or a
    failed case."""

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter, _ResponseWire] | None = None
        self.wire: _ResponseWire | None = None  # the latest answer, also once dropped

    async def exchange(self, parts: list[bytes], pattern: str) -> _ResponseWire:
        """Send ``parts`` while reading the answer; return it once complete."""
        if self.conn is None:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self.conn = (reader, writer, _ResponseWire())
        reader, writer, wire = self.conn
        wire.reset()
        self.wire = wire
        sender = asyncio.create_task(send(writer, parts, pattern))
        try:
            while not wire.complete:
                data = await reader.read(1 << 18)
                if not data:
                    raise ConnectionError(f"proxy closed after status {wire.status or 'none'}")
                wire.parser.feed_data(data)
            if not sender.done():
                raise AssertionError("answered before the request was sent whole")
            await sender
        except BaseException:
            sender.cancel()
            self.drop()
            raise
        if not wire.parser.should_keep_alive():
            self.drop()
        return wire

    def received(self) -> int:
        return self.wire.check.size if self.wire is not None else 0

    def drop(self) -> None:
        if self.conn is not None:
            self.conn[1].transport.abort()
            self.conn = None


# -- the sweep ----------------------------------------------------------------------------


async def _proxy(
    make_proxy: ProxyFactory, upstream: RawUpstream, tokens: Upstream, kind: str, tmp: Path
) -> Client:
    url = await make_proxy(
        f'[server]\nspool_dir = "{tmp}"\n'
        f'[[routes]]\nprefix = "/r"\nupstream = "{upstream.url}"\n{ROUTE_KINDS[kind]}\n'
        f'[auth.a]\ntype = "client_credentials"\ntoken_url = "{tokens.url}/oauth/token"\n'
        f'client_id = "id"\nclient_secret = "{SECRET}"\n'
    )
    proxy = Client(url)
    async with asyncio.timeout(10):  # the token, the pooled connection: all warm
        warm = await proxy.exchange([b"GET /r/dl/1/length/one HTTP/1.1\r\nHost: s\r\n\r\n"], "one")
    assert warm.status == 200, warm.text
    return proxy


def label(size: int) -> str:
    """A size as a reader thinks of it: "256 KiB+1", "8 MiB-1", "1000"."""
    for unit, name in ((1 << 20, "MiB"), (KIB, "KiB")):
        whole = round(size / unit)
        if whole and abs(size - whole * unit) <= 1:
            delta = size - whole * unit
            return f"{whole} {name}" + (f"{delta:+d}" if delta else "")
    return str(size)


async def _sweep(
    cases: list[tuple[int, str]],
    run: Callable[[int, str], Awaitable[str | None]],
    progress: Callable[[], str],
) -> None:
    """Run every (size, pattern) case under its own deadline; fail once with all that
    failed, each named (a hung one with ``progress()``: how far its bytes got)."""
    failures: list[str] = []
    hangs = 0
    for number, (size, pattern) in enumerate(cases):
        name = f"{label(size)} ({size} bytes), pattern {pattern}"
        deadline = CASE_DEADLINE + size / DEADLINE_RATE
        try:
            async with asyncio.timeout(deadline):
                problem = await run(size, pattern)
        except TimeoutError:
            hangs += 1
            problem = f"hung: no complete answer within {deadline:.1f} s ({progress()})"
        except (ConnectionError, AssertionError, httptools.HttpParserError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            failures.append(f"{name}: {problem}")
        if hangs >= MAX_HANGS:
            failures.append(f"stopped after {hangs} hangs; {len(cases) - number - 1} cases not run")
            break
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)


def _cases() -> list[tuple[int, str]]:
    return [(size, pattern) for pattern, sizes in PATTERNS.items() for size in sizes]


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("kind", list(ROUTE_KINDS))
async def test_upload_sweep(
    make_proxy: ProxyFactory,
    raw_upstream: RawUpstream,
    upstream: Upstream,
    tmp_path: Path,
    kind: str,
    framing: str,
) -> None:
    """Every request body reaches the upstream byte for byte, on every route kind."""
    proxy = await _proxy(make_proxy, raw_upstream, upstream, kind, tmp_path)

    async def run(size: int, pattern: str) -> str | None:
        head = b"POST /r/up HTTP/1.1\r\nHost: s\r\n" + (
            b"Content-Length: %d\r\n\r\n" % size
            if framing == "length"
            else b"Transfer-Encoding: chunked\r\n\r\n"
        )
        raw_upstream.last = None
        parts = pieces(head, encode(PATTERN[:size], framing, pattern), pattern)
        answer = await proxy.exchange(parts, pattern)
        if answer.status != 200:
            return f"status {answer.status}: {answer.text[:200]!r}"
        seen = json.loads(answer.text)
        if seen["size"] == size and seen["sha256"] == expected_sha(size):
            return None
        return (
            f"upstream got {seen['size']} bytes ({seen['framing']}), "
            f"first wrong byte at {seen['wrong_at']}"
        )

    def progress() -> str:
        last = raw_upstream.last
        if last is None:
            return "the upstream got no request"
        return f"the upstream got {last.check.size} body bytes, {last.framing}"

    await _sweep(_cases(), run, progress)
    assert raw_upstream.errors == []


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
@pytest.mark.parametrize("kind", list(ROUTE_KINDS))
async def test_download_sweep(
    make_proxy: ProxyFactory,
    raw_upstream: RawUpstream,
    upstream: Upstream,
    tmp_path: Path,
    kind: str,
    framing: str,
) -> None:
    """Every answer body reaches the client byte for byte, however the upstream frames
    and splits it."""
    proxy = await _proxy(make_proxy, raw_upstream, upstream, kind, tmp_path)

    async def run(size: int, pattern: str) -> str | None:
        request = b"GET /r/dl/%d/%s/%s HTTP/1.1\r\nHost: s\r\n\r\n" % (
            size,
            framing.encode(),
            pattern.encode(),
        )
        answer = await proxy.exchange([request], "one")
        if answer.status != 200:
            return f"status {answer.status}: {answer.text[:200]!r}"
        return answer.check.problem(size)

    def progress() -> str:
        return f"the client got {proxy.received()} body bytes"

    await _sweep(_cases(), run, progress)
    assert raw_upstream.errors == []
