"""The client leg (proxy/http/server.py) over raw sockets: framing, order, limits, refusals."""

from __future__ import annotations

import asyncio
import json

import pytest

from proxy.errors import ProxyError
from proxy.http.server import MAX_HEAD, Handler, Reply, Request, Server

from .conftest import ProxyFactory, Upstream
from .rawclient import send


def _responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream of Content-Length framed responses."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        length = int(headers.get("content-length", len(rest)))
        out.append((int(lines[0].split(" ")[1]), headers, rest[:length]))
        raw = rest[length:]
    return out


async def _proxy(make_proxy: ProxyFactory, upstream: Upstream) -> str:
    return await make_proxy(f'[[routes]]\nprefix = "/u"\nupstream = "{upstream.url}"\n')


async def test_pipelined_requests_are_answered_in_order(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """Requests sent back to back on one connection get their answers in the same order."""
    proxy = await _proxy(make_proxy, upstream)
    requests = b"".join(
        b"GET /u/slow?s=%s HTTP/1.1\r\nHost: p\r\nX-Request-ID: r%d\r\n\r\n" % (delay, i)
        for i, delay in enumerate((b"0.3", b"0", b"0.1"))
    )
    raw = await send(
        proxy, requests + b"GET /u/last HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
    )
    answers = _responses(raw)
    assert [a[1]["x-request-id"] for a in answers[:3]] == ["r0", "r1", "r2"]
    assert [a[0] for a in answers] == [200, 200, 200, 200]
    assert [s.raw_path for s in upstream.seen] == [
        "/slow?s=0.3",
        "/slow?s=0",
        "/slow?s=0.1",
        "/last",
    ]


async def test_http_1_0_client_gets_a_close_delimited_body(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """An answer without a length reaches an HTTP/1.0 client whole, ended by the close."""
    proxy = await _proxy(make_proxy, upstream)
    raw = await send(proxy, b"GET /u/download?size=100000 HTTP/1.0\r\nHost: p\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body == b"x" * 100000


async def test_http_1_1_client_gets_a_chunked_body_when_the_upstream_gave_no_length(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """Without an upstream length, an HTTP/1.1 client gets chunked framing it can trust."""
    proxy = await _proxy(make_proxy, upstream)
    raw = await send(
        proxy, b"GET /u/download?size=70000 HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    decoded = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        decoded += body[:size]
        body = body[size + 2 :]
    assert decoded == b"x" * 70000


POST = b"POST /u/x HTTP/1.1\r\nHost: p\r\n"


@pytest.mark.parametrize(
    "request_bytes",
    [
        POST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        POST + b"Content-Length: +3\r\n\r\nabc",
        POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"GET /u/x HTTP/1.1\r\nHost: p\r\nX-A: 1\r\n folded\r\n\r\n",
        b"GET /u/x HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer S3CRET\x00\r\n\r\n",
        b"GET /u/x HTTP/1.1\r\nHost: p\nX-Bare-LF: 1\r\n\r\n",
        b"GARBAGE\r\n\r\n",
    ],
    ids=["cl-and-te", "two-cl", "plus-cl", "bad-chunk", "folded", "nul", "bare-lf", "garbage"],
)
async def test_malformed_requests_get_our_400_and_reach_nothing(
    make_proxy: ProxyFactory, upstream: Upstream, request_bytes: bytes
) -> None:
    """A request that is not well-formed HTTP/1.1 is refused by the proxy with a JSON 400
    that echoes none of it, its connection is closed, and no upstream sees it."""
    proxy = await _proxy(make_proxy, upstream)
    raw = await send(proxy, request_bytes)
    [(status, headers, body)] = _responses(raw)
    assert status == 400
    assert headers["x-proxy-error"] == "bad_request"
    assert headers["connection"] == "close"
    assert json.loads(body)["error"] == "bad_request"
    assert b"S3CRET" not in raw
    assert upstream.seen == []


async def test_oversized_request_head_gets_431(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """A head over the limit is refused with 431 before it is held whole, and not forwarded."""
    proxy = await _proxy(make_proxy, upstream)
    big = b"X-Big: " + b"a" * (MAX_HEAD + 10) + b"\r\n"
    raw = await send(proxy, b"GET /u/x HTTP/1.1\r\nHost: p\r\n" + big + b"\r\n")
    [(status, headers, _)] = _responses(raw)
    assert status == 431
    assert headers["x-proxy-error"] == "header_too_large"
    many = b"".join(b"X-H%d: 1\r\n" % i for i in range(200))
    raw = await send(proxy, b"GET /u/x HTTP/1.1\r\nHost: p\r\n" + many + b"\r\n")
    assert _responses(raw)[0][0] == 431
    assert upstream.seen == []


async def test_keep_alive_serves_several_requests_and_head_has_no_body(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """One connection carries consecutive requests; a HEAD answer keeps its length, no body."""
    proxy = await _proxy(make_proxy, upstream)
    raw = await send(
        proxy,
        b"GET /u/a HTTP/1.1\r\nHost: p\r\n\r\n"
        b"HEAD /u/download?size=5000&framing=length HTTP/1.1\r\nHost: p\r\n\r\n"
        b"GET /u/c HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
    )
    first, rest = raw.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 200")
    # The HEAD answer announces 5000 bytes and sends none: the next answer follows at once.
    assert b"Content-Length: 5000" in rest
    assert rest.count(b"HTTP/1.1 200 OK") == 2
    assert len(upstream.seen) == 3


async def _serve_directly(handler: Handler, header_timeout: float = 10.0) -> tuple[Server, str]:
    def refusal(error: ProxyError, remote: str | None) -> Reply:
        return Reply(error.status, {"X-Refused": error.message}, b"{}")

    server = Server(handler, refusal, header_timeout=header_timeout)
    addresses = await server.listen("127.0.0.1", 0)
    host, port = addresses[0][:2]
    return server, f"http://{host}:{port}"


async def test_slow_request_head_is_cut_off() -> None:
    """A client that sends its head a byte at a time (slowloris) is answered 408 and closed
    once header_timeout has passed."""

    async def handler(request: Request) -> Reply:
        return Reply(200, {}, b"ok")

    server, base = await _serve_directly(handler, header_timeout=1.0)
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        # Done writing well before the timeout: bytes still arriving when the server
        # closes would make its kernel answer with a reset instead of the 408.
        for byte in b"GET / HTTP/1.1\r\n":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)
        # ... and never finishes it: the proxy must not wait for ever.
        answer = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
        await server.stop(0)
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_handler_failure_is_a_500_and_nothing_more() -> None:
    """A handler that raises before answering gets the client a 500, not a hang."""

    async def handler(request: Request) -> Reply:
        raise RuntimeError("bug")

    server, base = await _serve_directly(handler)
    try:
        raw = await send(base, b"GET / HTTP/1.1\r\nHost: p\r\n\r\n")
    finally:
        await server.stop(0)
    assert raw.startswith(b"HTTP/1.1 500 ")
    assert b"bug" not in raw


def test_both_legs_parse_http_with_compiled_llhttp() -> None:
    """The proxy's request and response parsers are llhttp compiled in C (httptools has no
    pure-Python fallback that could disagree with it)."""
    import httptools
    import httptools.parser.parser as compiled

    from proxy.http import client, server

    assert compiled.__file__ is not None
    assert compiled.__file__.endswith(".so")
    assert vars(server)["httptools"] is httptools
    assert vars(client)["httptools"] is httptools
    assert httptools.HttpRequestParser is compiled.HttpRequestParser
    assert httptools.HttpResponseParser is compiled.HttpResponseParser


def test_aiohttp_parser_is_the_one_ci_asked_for() -> None:
    """aiohttp still parses token-endpoint answers and runs the sandbox: CI runs the suite
    with its C parser, then this test and theirs again with AIOHTTP_NO_EXTENSIONS=1."""
    import os

    from aiohttp import http_parser

    c_parser = http_parser.HttpRequestParser is not http_parser.HttpRequestParserPy
    assert c_parser is not bool(os.environ.get("AIOHTTP_NO_EXTENSIONS"))
