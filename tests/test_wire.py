"""The wire layer's promises, each once reproduced as a defect: interim answers only at the
head of the line, trailers ending cleanly, cut answers looking cut, odd bytes refused
rather than crashing, trailing whitespace ignored, errors that echo nothing."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Literal

import pytest
import trustme

from proxy.http.client import Pool

from .conftest import ProxyFactory
from .rawclient import Received, exchange, send
from .rawpeer import FIN, RST, RawUpstreams, Step


def routes(port: int, extra: str = "", server: str = "") -> str:
    return (
        f"[server]\n{server}\n"
        f'[[routes]]\nprefix = "/p"\nupstream = "http://127.0.0.1:{port}"\n'
        f"timeout = {{ connect = 2, read = 1 }}\n{extra}\n"
    )


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)


# -- interim answers ------------------------------------------------------------------------


async def test_100_continue_waits_for_the_answer_ahead_of_it(
    raw_upstream: RawUpstreams, make_proxy: ProxyFactory
) -> None:
    """A pipelined request with Expect: 100-continue gets its 100 only after the answer
    still streaming ahead of it has ended, never inside it."""
    slow: list[Step] = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
        0.3,
        b"6\r\nsecond\r\n0\r\n\r\n",
    ]
    up = await raw_upstream(slow, [ok(b"posted")])
    running = await make_proxy.serve(routes(up.port))
    reader, writer = await asyncio.open_connection(*running.address)
    writer.write(
        b"GET /p/slow HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /p/post HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        first = await reader.readuntil(b"0\r\n\r\n")  # the whole first answer, uncorrupted
        assert b"100 Continue" not in first
        assert b"firstsecond" in first.replace(b"\r\n", b"").replace(b"5first6", b"first")
        interim = await reader.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        second = await reader.readuntil(b"posted")
    writer.close()
    assert second.startswith(b"HTTP/1.1 200")
    assert up.seen[1].raw.endswith(b"\r\n\r\nhello")
    assert b"expect" not in up.seen[1].raw.lower()


async def test_expect_with_trailing_whitespace_is_recognised(
    raw_upstream: RawUpstreams, make_proxy: ProxyFactory
) -> None:
    """`Expect: 100-continue ` (trailing space) still gets its 100 Continue."""
    up = await raw_upstream([ok(b"done")])
    running = await make_proxy.serve(routes(up.port))
    reader, writer = await asyncio.open_connection(*running.address)
    writer.write(
        b"PUT /p/x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue \t\r\nContent-Length: 3\r\n\r\n"
    )
    async with asyncio.timeout(5):
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"abc")
        assert (await reader.readuntil(b"done")).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_no_100_continue_for_a_request_refused_before_its_body(
    raw_upstream: RawUpstreams, make_proxy: ProxyFactory
) -> None:
    """A request refused without reading its body gets its final answer, no 100 first."""
    up = await raw_upstream()
    running = await make_proxy.serve(routes(up.port))
    got = await send(
        running.url,
        b"POST /nowhere HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    )
    assert got.startswith(b"HTTP/1.1 404")
    assert b"100 Continue" not in got


# -- trailers -------------------------------------------------------------------------------


async def test_upstream_trailers_end_the_answer_cleanly(
    raw_upstream: RawUpstreams, make_proxy: ProxyFactory
) -> None:
    """A chunked answer ending in a trailer section reaches the client whole, with its
    last chunk and without the trailer fields, and the connection stays usable."""
    with_trailers = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
        b"4\r\ndata\r\n0\r\nX-Checksum: abc\r\nX-More: 1\r\n\r\n"
    )
    up = await raw_upstream([with_trailers], [ok(b"again")])
    running = await make_proxy.serve(routes(up.port))
    reader, writer = await asyncio.open_connection(*running.address)
    writer.write(b"GET /p/t HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(3):  # well under the 1 s read timeout's cut plus slack
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readuntil(b"0\r\n\r\n")
        writer.write(b"GET /p/again HTTP/1.1\r\nHost: x\r\n\r\n")
        second = await reader.readuntil(b"again")
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert b"trailer" not in head.lower()
    assert body == b"4\r\ndata\r\n0\r\n\r\n"
    assert b"X-Checksum" not in second
    assert second.startswith(b"HTTP/1.1 200")


async def test_request_trailers_get_exactly_one_answer(
    raw_upstream: RawUpstreams, make_proxy: ProxyFactory
) -> None:
    """A chunked request ending with trailers (sent in reads of their own, after a large
    head) gets one answer, and the next request on the connection gets the next; the
    trailers are not forwarded."""
    up = await raw_upstream([ok(b"one")], [ok(b"two")])
    running = await make_proxy.serve(routes(up.port))
    reader, writer = await asyncio.open_connection(*running.address)
    pieces = [
        b"POST /p/a HTTP/1.1\r\nHost: x\r\nX-Big: " + b"h" * 40000 + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n",
        b"X-Sum: 1\r\nX-Other: " + b"v" * 30000 + b"\r\n",
        b"\r\n",
        b"GET /p/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ]
    async with asyncio.timeout(5):
        for piece in pieces:
            writer.write(piece)
            await asyncio.sleep(0.05)
        got = await reader.read(-1)
    writer.close()
    assert re.findall(rb"HTTP/1.1 (\d+)", got) == [b"200", b"200"]
    assert up.seen[0].raw.endswith(b"\r\n\r\nabc")
    assert b"X-Sum" not in up.seen[0].raw


async def test_endless_request_trailers_are_bounded(
    raw_upstream: RawUpstreams, make_proxy: ProxyFactory
) -> None:
    """A trailer section that never ends is refused once it passes the head limit (64
    KiB, counted from the first read that holds trailer bytes only), with one answer
    (400) and nothing sent upstream."""
    up = await raw_upstream([ok(b"never")])
    running = await make_proxy.serve(routes(up.port))
    reader, writer = await asyncio.open_connection(*running.address)
    writer.write(
        b"POST /p/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Endless: "
    )
    got = b""
    async with asyncio.timeout(5):
        for _ in range(8):  # 128 KiB in all, in reads the proxy sees one by one
            await asyncio.sleep(0.02)
            writer.write(b"v" * 16384)
        got = await reader.read(-1)
    writer.close()
    assert re.findall(rb"HTTP/1.1 (\d+)", got) == [b"400"]
    assert up.seen == []


# -- answers cut short ----------------------------------------------------------------------

CUTS: dict[str, list[Step]] = {
    "length, reset": [b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10, 0.05, RST],
    "length, close": [b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10, 0.05, FIN],
    "length, silence": [b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10, 3.0],
    "chunked, reset": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n", 0.05, RST],
    "chunked, close": [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\naaaaa\r\n",
        0.05,
        FIN,
    ],
    "chunked, bad chunk": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\naaaaaXX"],
    "chunked, silence": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n", 3.0],
    "close-delimited, reset": [b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * 10, 0.05, RST],
    "close-delimited, silence": [b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * 10, 3.0],
    "http/1.0 close-delimited, reset": [b"HTTP/1.0 200 OK\r\n\r\n" + b"a" * 10, 0.05, RST],
}


def _get(version: str) -> bytes:
    close = "Connection: close\r\n" if version == "1.1" else ""
    return f"GET /p/x HTTP/{version}\r\nHost: x\r\n{close}\r\n".encode()


def _looks_whole(got: Received, version: str) -> bool:
    """Could a client take this answer for complete? Only if the connection ended cleanly
    and the framing the client was given is satisfied. (A connection the proxy leaves open
    fails the test: every answer here ends it.)"""
    assert got.end != "open", got
    if got.end == "rst":
        return False  # the client knows it was cut
    head, _, body = got.data.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    if length:
        return len(body) >= int(length.group(1))
    if re.search(rb"(?i)\r\ntransfer-encoding: *chunked", head):
        return body.endswith(b"0\r\n\r\n")
    return True  # close-delimited and closed cleanly: it looks whole


@pytest.mark.parametrize("version", ["1.1", "1.0"])
@pytest.mark.parametrize("cut", list(CUTS))
async def test_a_cut_answer_never_looks_whole(
    raw_upstream: RawUpstreams, make_proxy: ProxyFactory, cut: str, version: str
) -> None:
    """However the upstream's answer breaks off, the client can tell: a short body under
    its Content-Length, no last chunk, or a reset where the close would end the body."""
    up = await raw_upstream(CUTS[cut])
    running = await make_proxy.serve(routes(up.port))
    got = await exchange(running.url, _get(version))
    if got.data.startswith(b"HTTP/1.1 502"):
        # Broken before any of its body came: the answer's head was still ours to hold
        # back, and the client gets a whole 502 instead of a cut 200.
        assert b"X-Proxy-Error: upstream_unreachable" in got.data
        return
    assert got.data.startswith(b"HTTP/1.1 200"), got.data[:100]
    assert not _looks_whole(got, version), got


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_a_whole_close_delimited_answer_ends_cleanly(
    raw_upstream: RawUpstreams, make_proxy: ProxyFactory, version: str
) -> None:
    """The control: a close-delimited answer that ends with the upstream's FIN is whole
    (last chunk for HTTP/1.1, a clean close for HTTP/1.0)."""
    up = await raw_upstream([b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * 10, 0.05, FIN])
    running = await make_proxy.serve(routes(up.port))
    got = await exchange(running.url, _get(version))
    assert got.end == "fin"
    assert _looks_whole(got, version)
    assert got.data.replace(b"a\r\naaaaaaaaaa\r\n0\r\n\r\n", b"aaaaaaaaaa").endswith(b"a" * 10)


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_shutdown_grace_running_out_cuts_visibly(
    raw_upstream: RawUpstreams, make_proxy: ProxyFactory, version: str
) -> None:
    """An answer still streaming when shutdown_grace runs out ends with a reset (HTTP/1.0)
    or without its last chunk (HTTP/1.1), never with a clean close."""
    up = await raw_upstream([b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * 10, 5.0])
    running = await make_proxy.serve(routes(up.port), grace=0.3)
    reader, writer = await asyncio.open_connection(*running.address)
    writer.write(f"GET /p/x HTTP/{version}\r\nHost: x\r\n\r\n".encode())
    got = bytearray()
    end: Literal["fin", "rst"] = "fin"
    async with asyncio.timeout(5):
        got += await reader.readuntil(b"a" * 10)
        stopping = asyncio.ensure_future(running.stop())
        try:
            while chunk := await reader.read(65536):
                got += chunk
        except ConnectionResetError:
            end = "rst"
        await stopping
    writer.close()
    cut = Received(bytes(got), end)
    assert not _looks_whole(cut, version), cut
    if version == "1.0":
        assert cut.end == "rst"


# -- odd bytes --------------------------------------------------------------------------------

KEY = "crm-key-0123456789abcdef"


def _with_client(port: int) -> str:
    return routes(port) + f'[clients.crm]\nkey = "{KEY}"\n'


def _requests_total(text: str) -> dict[str, float]:
    found = re.findall(r"^proxy_requests_total\{([^}]*)\} (\S+)$", text, re.M)
    return {labels: float(value) for labels, value in found if float(value)}


async def test_a_key_that_is_not_utf8_is_a_401(
    raw_upstream: RawUpstreams, make_proxy: ProxyFactory
) -> None:
    """An X-Proxy-Key holding a byte that is not UTF-8 is a wrong key: 401, an access
    line saying 401, counted once, nothing sent upstream."""
    up = await raw_upstream([ok(b"no")])
    running = await make_proxy.serve(_with_client(up.port))
    got = await send(
        running.url,
        b"GET /p/x HTTP/1.1\r\nHost: x\r\nX-Proxy-Key: crm-key-\xff\xfe\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert got.startswith(b"HTTP/1.1 401")
    assert b"X-Proxy-Error: unauthorized" in got
    assert [line["status"] for line in running.lines] == [401]
    counts = _requests_total(running.state.metrics.exposition().decode())
    assert list(counts.values()) == [1.0]
    assert "4xx" in next(iter(counts))
    assert up.seen == []


async def test_a_valid_key_with_trailing_whitespace_is_accepted(
    raw_upstream: RawUpstreams, make_proxy: ProxyFactory
) -> None:
    """`X-Proxy-Key: <key> ` (trailing space or tab) is the key: whitespace around a field
    value is not part of it."""
    up = await raw_upstream([ok(b"yes")])
    running = await make_proxy.serve(_with_client(up.port))
    got = await send(
        running.url,
        f"GET /p/x HTTP/1.1\r\nHost: x\r\nX-Proxy-Key: {KEY} \t\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert got.startswith(b"HTTP/1.1 200"), got
    assert b"x-proxy-key" not in up.seen[0].raw.lower()


@pytest.mark.parametrize("value", [b"\xc2\xb2", b"\xff", b"\xd9\xa1", b"12\xe2\x80\x8b"])
async def test_a_retry_after_with_non_ascii_bytes_is_ignored(
    raw_upstream: RawUpstreams, make_proxy: ProxyFactory, value: bytes
) -> None:
    """An upstream 429 whose Retry-After holds non-ASCII bytes is taken as one without a
    Retry-After: the client gets an answer (never a 500), and the upstream connection is
    released."""
    throttled = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: %b\r\nContent-Length: 0\r\n\r\n"
    up = await raw_upstream([throttled % value])
    running = await make_proxy.serve(routes(up.port, "retry = { attempts = 1 }"))
    got = await send(running.url, b"GET /p/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 429"), got
    assert [line["status"] for line in running.lines] == [429]
    pool = running.state.runtime.targets["/p"].transport
    assert isinstance(pool, Pool)
    assert pool._count == len(pool._idle)  # no connection left checked out


async def test_a_failing_handler_is_logged_and_counted_once_as_500(
    raw_upstream: RawUpstreams, make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the handler (simulated: no input reaches one now) gives the client a 500,
    the access line 500, the metrics one 5xx and no 4xx."""
    from proxy import headers as headers_module

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(headers_module.HeaderPolicy, "upstream_request", broken)
    up = await raw_upstream([ok(b"never")])
    running = await make_proxy.serve(routes(up.port))
    got = await send(running.url, b"GET /p/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 500")
    assert b"X-Proxy-Error: internal_error" in got
    assert [line["status"] for line in running.lines] == [500]
    counts = _requests_total(running.state.metrics.exposition().decode())
    assert list(counts.values()) == [1.0]
    assert "5xx" in next(iter(counts))


# -- nothing echoed ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target", [b"/-/<svg>onload", b"/nowhere/<svg>onload", b"/-/status%3Csvg%3Eonload"]
)
async def test_errors_echo_no_word_of_the_request(
    raw_upstream: RawUpstreams, make_proxy: ProxyFactory, target: bytes
) -> None:
    """A 404 says there is no route, without repeating the path it was given."""
    up = await raw_upstream()
    running = await make_proxy.serve(routes(up.port))
    got = await send(
        running.url, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert got.startswith(b"HTTP/1.1 404")
    assert b"svg" not in got.lower()
    assert b"onload" not in got


@pytest.mark.parametrize("value", ["\u00b2\u00b3\u00b9", "\u0661", "1 2", "-1"])
async def test_a_max_forwards_that_is_no_ascii_number_is_refused_unechoed(
    raw_upstream: RawUpstreams, make_proxy: ProxyFactory, value: str
) -> None:
    """Max-Forwards of superscript or Arabic-Indic digits is a 400 that does not repeat
    it, and nothing is forwarded."""
    up = await raw_upstream([ok(b"never")])
    running = await make_proxy.serve(routes(up.port))
    head = f"OPTIONS /p/x HTTP/1.1\r\nHost: x\r\nMax-Forwards: {value}\r\n\r\n"
    got = await send(running.url, head.encode())
    assert got.startswith(b"HTTP/1.1 400")
    assert value.encode() not in got
    assert b"int()" not in got
    assert up.seen == []


def _tls_upstream(context: ssl.SSLContext, ragged: bool, ports: list[int]) -> None:
    """A TLS upstream (in a thread) answering one request close-delimited, then ending its
    stream with close_notify, or with a bare TCP FIN (``ragged``: a truncation)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ports.append(listener.getsockname()[1])
        listener.settimeout(10)
        raw, _ = listener.accept()
        tls = context.wrap_socket(raw, server_side=True)
        tls.recv(65536)
        tls.sendall(b"HTTP/1.1 200 OK\r\n\r\npartial-body")
        time.sleep(0.2)
        if ragged:
            plain = socket.socket(fileno=tls.detach())  # the TLS state dropped: no close_notify
            plain.shutdown(socket.SHUT_WR)
            time.sleep(0.3)
            plain.close()
        else:
            tls.unwrap().close()


@pytest.mark.parametrize("ragged", [False, True])
async def test_a_tls_answer_without_close_notify_is_cut(
    make_proxy: ProxyFactory, tmp_path: Path, ragged: bool
) -> None:
    """Over TLS a close-delimited answer ends with the upstream's close_notify; a TCP FIN
    without it is a truncation, and an HTTP/1.0 client gets a reset, not a clean end."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ports: list[int] = []
    thread = threading.Thread(target=_tls_upstream, args=(context, ragged, ports), daemon=True)
    thread.start()
    while not ports:
        await asyncio.sleep(0.01)
    running = await make_proxy.serve(
        f'[[routes]]\nprefix = "/p"\nupstream = "https://127.0.0.1:{ports[0]}"\n'
        f'ca_file = "{tmp_path / "ca.pem"}"\ntimeout = {{ connect = 2, read = 3 }}\n'
    )
    got = await exchange(running.url, b"GET /p/x HTTP/1.0\r\n\r\n")
    thread.join(5)
    assert got.data.endswith(b"partial-body")
    assert _looks_whole(got, "1.0") is (not ragged)
