"""The upstream client against raw upstreams on 127.0.0.1 that answer with exact bytes."""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict

from proxy.http.client import Pool, UpstreamClosedError, UpstreamError, UpstreamProtocolError

from .mocktransport import Request
from .rawpeer import CLOSE, RawUpstreams


async def _get(pool: Pool, method: str = "GET", **headers: str) -> tuple[int, bytes]:
    response = await pool.send(
        Request(method, "/p?q=1", CIMultiDict(headers)), connect_timeout=2, read_timeout=2
    )
    async with response:
        body = b"".join([chunk async for chunk in response.iter_any()])
    return response.status, body


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_keep_alive_reuses_one_connection(raw_upstream: RawUpstreams) -> None:
    """Consecutive requests travel over one pooled connection, with Host set once."""
    up = await raw_upstream(OK, OK, OK)
    pool = Pool("http", "127.0.0.1", up.port)
    for _ in range(3):
        assert await _get(pool) == (200, b"ok")
    await pool.close()
    assert len(up.connections) == 1
    assert up.seen[0].raw.startswith(b"GET /p?q=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert up.seen[0].raw.count(b"Host:") == 1


async def test_stale_pooled_connection_is_retried_for_an_idempotent_request(
    raw_upstream: RawUpstreams,
) -> None:
    """An upstream that silently closes idle connections costs a GET nothing."""
    up = await raw_upstream([OK, CLOSE], [OK, CLOSE])
    pool = Pool("http", "127.0.0.1", up.port)
    assert await _get(pool) == (200, b"ok")
    await asyncio.sleep(0.05)  # the upstream's FIN arrives while the connection is idle
    assert await _get(pool) == (200, b"ok")
    await pool.close()
    assert len(up.connections) == 2


async def test_head_answer_then_next_request_on_the_same_connection(
    raw_upstream: RawUpstreams,
) -> None:
    """A HEAD answer announces a body it does not send; the next answer still parses."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    up = await raw_upstream(head, OK)
    pool = Pool("http", "127.0.0.1", up.port)
    assert await _get(pool, "HEAD") == (200, b"")
    assert await _get(pool) == (200, b"ok")
    await pool.close()
    assert len(up.connections) == 1


async def test_interim_answers_are_skipped(raw_upstream: RawUpstreams) -> None:
    """100 Continue and 103 Early Hints precede the real answer, which is what we get."""
    up = await raw_upstream(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK,
    )
    pool = Pool("http", "127.0.0.1", up.port)
    assert await _get(pool) == (200, b"ok")
    await pool.close()


async def test_close_delimited_body_is_read_to_the_end(
    raw_upstream: RawUpstreams,
) -> None:
    """An answer without Content-Length or chunking ends when the upstream closes."""
    up = await raw_upstream(
        [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 100_000, CLOSE],
    )
    pool = Pool("http", "127.0.0.1", up.port)
    assert await _get(pool) == (200, b"x" * 100_000)
    await pool.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
        b"HTTX/1.1 200 OK\r\n\r\n",
    ],
    ids=["cl-and-te", "two-cl", "bad-chunk", "control-byte", "huge-head", "101", "garbage"],
)
async def test_malformed_answers_fail_and_the_connection_is_dropped(
    raw_upstream: RawUpstreams, answer: bytes
) -> None:
    """Answers that break HTTP/1.1 framing are errors, never half-trusted or reused."""
    up = await raw_upstream(answer, OK)
    pool = Pool("http", "127.0.0.1", up.port)
    with pytest.raises(UpstreamError):
        await _get(pool)
    assert await _get(pool) == (200, b"ok")
    await pool.close()
    assert len(up.connections) == 2


async def test_answer_cut_short_is_an_error(raw_upstream: RawUpstreams) -> None:
    """A body shorter than its Content-Length raises instead of ending quietly."""
    up = await raw_upstream([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", CLOSE])
    pool = Pool("http", "127.0.0.1", up.port)
    with pytest.raises(UpstreamClosedError):
        await _get(pool)
    await pool.close()


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\0b"])
async def test_header_values_cannot_split_the_request(
    raw_upstream: RawUpstreams, value: str
) -> None:
    """A CR, LF or NUL in a value (say, a token from a broken issuer) sends nothing."""
    up = await raw_upstream(OK)
    pool = Pool("http", "127.0.0.1", up.port)
    with pytest.raises(UpstreamProtocolError):
        await _get(pool, Authorization=value)
    await pool.close()
    assert up.seen == []


async def test_silent_upstream_times_out(raw_upstream: RawUpstreams) -> None:
    """No answer within the read timeout is a TimeoutError, not a hang."""
    up = await raw_upstream(b"")  # reads the request, answers nothing
    pool = Pool("http", "127.0.0.1", up.port)
    with pytest.raises(TimeoutError):
        await pool.send(Request(), connect_timeout=1, read_timeout=0.2)
    await pool.close()


class _Stream:
    """A streamed request body (a BodyStream) of known parts."""

    def __init__(self, *parts: bytes) -> None:
        self._parts = list(parts)

    async def readany(self) -> bytes:
        return self._parts.pop(0) if self._parts else b""


@pytest.mark.parametrize(
    ("body", "length", "framing"),
    [
        (None, None, None),
        (None, 0, b"Content-Length: 0"),
        (b"abc", 3, b"Content-Length: 3"),
        (b"abc", None, b"Content-Length: 3"),
        (_Stream(b"ab", b"c"), 3, b"Content-Length: 3"),
    ],
    ids=["no-body", "empty", "bytes", "bytes-no-length", "stream-with-length"],
)
async def test_a_body_is_framed_by_its_length(
    raw_upstream: RawUpstreams,
    body: bytes | _Stream | None,
    length: int | None,
    framing: bytes | None,
) -> None:
    """A known length goes out as Content-Length; no body and no length, no framing header
    (a stream of unknown length goes chunked: test_streaming.py's unbuffered upload)."""
    up = await raw_upstream(OK)
    pool = Pool("http", "127.0.0.1", up.port)
    request = Request("POST", "/", CIMultiDict(), body, length)
    async with await pool.send(request, connect_timeout=2, read_timeout=2) as response:
        assert response.status == 200
    await pool.close()
    head, _, sent = up.seen[0].raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    framed = [line for line in lines if line.startswith((b"Content-Length", b"Transfer-Encoding"))]
    assert framed == ([] if framing is None else [framing])
    assert sent == (b"abc" if length or body else b"")
