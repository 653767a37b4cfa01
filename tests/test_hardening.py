"""Hostile input, as raw bytes on a socket: what must never get past the proxy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy import config as config_module

from .conftest import LEAK_WATCH, ProxyFactory, Scripted, Upstream
from .processes import start_proxy
from .rawclient import send
from .rawpeer import RawUpstreams

TOKEN = "upstream-test-token"  # what the conftest token endpoint issues
LEAK_WATCH.update({"hardening-secret-1", TOKEN})  # the secret and token of the proxies here


def _statuses(raw: bytes) -> list[int]:
    """Status codes of the answers in a byte stream (bodies here never hold a status line)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


async def _proxy(make_proxy: ProxyFactory, upstream: Upstream, extra: str = "") -> str:
    return await make_proxy(
        f"[server]\n{extra}\n"
        f'[[routes]]\nprefix = "/u"\nupstream = "{upstream.url}"\nauth = "a"\n'
        f'[auth.a]\ntype = "client_credentials"\ntoken_url = "{upstream.url}/oauth/token"\n'
        'client_id = "id"\nclient_secret = "hardening-secret-1"\n'
    )


H = b"Host: p\r\n"
CHUNKED_POST = b"POST /c/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
CHUNK_16K = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"  # one chunk of 16 KiB of data
FRAMING = {
    "cl-and-te": b"POST /u/x HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "cl-duplicate": b"POST /u/x HTTP/1.1\r\n"
    + H
    + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "cl-plus": b"POST /u/x HTTP/1.1\r\n" + H + b"Content-Length: +2\r\n\r\nab",
    "cl-minus": b"POST /u/x HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n",
    "cl-hex": b"POST /u/x HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nabcde",
    "cl-underscore": b"POST /u/x HTTP/1.1\r\n" + H + b"Content-Length: 1_0\r\n\r\n0123456789",
    "cl-space-colon": b"POST /u/x HTTP/1.1\r\n" + H + b"Content-Length : 3\r\n\r\nabc",
    "te-chunked-chunked": b"POST /u/x HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    "te-chunked-identity": b"POST /u/x HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-xchunked": b"POST /u/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-gzip": b"POST /u/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
    "te-two-lines": b"POST /u/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "http10-te-then-pipelined": b"POST /u/x HTTP/1.0\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /u/SMUGGLED HTTP/1.1\r\n"
    + H
    + b"\r\n",
    "bad-chunk-size": b"POST /u/x HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    "bare-lf": b"GET /u/x HTTP/1.1\n" + H + b"\r\n",
    "bare-cr": b"GET /u/x HTTP/1.1\r\nHost: p\rX: 1\r\n\r\n",
    "nul-in-header": b"GET /u/x HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n",
    "folded-header": b"GET /u/x HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n",
    "no-host": b"GET /u/x HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET /u/x HTTP/1.1\r\nHost: p\r\nHost: q\r\n\r\n",
    "absolute-form": b"GET http://evil.example/u/x HTTP/1.1\r\n" + H + b"\r\n",
    "http-0.9": b"GET /u/x\r\n\r\n",
    "http-2.0": b"GET /u/x HTTP/2.0\r\n" + H + b"\r\n",
    "asterisk": b"OPTIONS * HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
    "no-slash": b"GET u/x HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
    "connect": b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
    "trace": b"TRACE /u/x HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
    "websocket-with-body": b"POST /u/x HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\n"
    b"Upgrade: websocket\r\nContent-Length: 5\r\n\r\nhello",
}
EXPECTED = {
    "te-gzip": 501,
    "te-xchunked": 501,
    "http-0.9": 505,
    "http-2.0": 505,
    "connect": 405,
    "trace": 405,
}


@pytest.mark.parametrize("name", list(FRAMING))
async def test_ambiguous_or_forbidden_requests_are_refused_and_reach_nothing(
    make_proxy: ProxyFactory, upstream: Upstream, name: str
) -> None:
    """Every request a proxy and an upstream could read two ways is refused by us (400,
    or 405/501/505 as the case says) and no byte of it reaches any upstream."""
    proxy = await _proxy(make_proxy, upstream)
    raw = await send(proxy, FRAMING[name])
    statuses = _statuses(raw)
    assert statuses[:1] == [EXPECTED.get(name, 400)], raw[:300]
    assert len(statuses) == 1  # a pipelined request behind it never runs
    assert [s for s in upstream.seen if s.raw_path != "/oauth/token"] == []
    if statuses == [405]:  # RFC 9110 15.5.6: a 405 says what is allowed
        assert b"\r\nallow: get, head, post" in raw.lower()


HOSTS = 'hosts = ["proxy.internal", "gateway.internal:8080", "[::1]", "kube.internal"]'
CLOSE = b"Connection: close\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status", "upstream_path"),
    [
        # Host names the proxy serves, however spelled: forwarded.
        (b"GET /u/x HTTP/1.1\r\nHost: proxy.internal\r\n", 200, "/x"),
        (b"GET /u/x HTTP/1.1\r\nHost: PROXY.Internal.:9000\r\n", 200, "/x"),
        (b"GET /u/x HTTP/1.1\r\nHost: gateway.internal:8080\r\n", 200, "/x"),
        (b"GET /u/x HTTP/1.1\r\nHost: [::1]:8080\r\n", 200, "/x"),
        # Absolute-form naming a served host that Host repeats: routed on its path.
        (
            b"GET http://proxy.internal/u/abs?q=1 HTTP/1.1\r\nHost: proxy.internal\r\n",
            200,
            "/abs?q=1",
        ),
        (
            b"GET http://gateway.internal:8080/u/abs HTTP/1.1\r\nHost: gateway.internal:8080\r\n",
            200,
            "/abs",
        ),
        # A Host the proxy does not serve (a DNS-rebinding page, a misrouted client): 421.
        (b"GET /u/x HTTP/1.1\r\nHost: evil.example\r\n", 421, None),
        (b"GET /u/x HTTP/1.1\r\nHost: gateway.internal:8081\r\n", 421, None),
        (b"GET /u/x HTTP/1.1\r\nHost: gateway.internal\r\n", 421, None),
        (b"GET /u/x HTTP/1.1\r\nHost: user@proxy.internal\r\n", 421, None),
        (b"GET /u/x HTTP/1.0\r\n", 421, None),  # no Host at all: not one we serve
        # U+212A KELVIN SIGN lower-cases to "k": only ASCII names are compared.
        (b"GET /u/x HTTP/1.1\r\nHost: \xe2\x84\xaaube.internal\r\n", 421, None),
        # A query straight after the authority is the root path with that query (no
        # route for "/" here: a 404, not a refused target).
        (b"GET http://proxy.internal?q=1 HTTP/1.1\r\nHost: proxy.internal\r\n", 404, None),
        # Target and Host disagree, or the target names a host we do not serve: 400.
        (b"GET http://evil.example/u/x HTTP/1.1\r\nHost: proxy.internal\r\n", 400, None),
        (b"GET http://proxy.internal/u/x HTTP/1.1\r\nHost: gateway.internal:8080\r\n", 400, None),
        (b"GET http://proxy.internal:81/u/x HTTP/1.1\r\nHost: proxy.internal\r\n", 400, None),
        (b"GET http://user@proxy.internal/u/x HTTP/1.1\r\nHost: proxy.internal\r\n", 400, None),
        (b"GET http://proxy.internal/u/../x HTTP/1.1\r\nHost: proxy.internal\r\n", 400, None),
        (b"GET http://proxy.internal//evil/x HTTP/1.1\r\nHost: proxy.internal\r\n", 400, None),
    ],
)
async def test_server_hosts_refuses_hosts_it_does_not_serve(
    make_proxy: ProxyFactory,
    upstream: Upstream,
    request_bytes: bytes,
    status: int,
    upstream_path: str | None,
) -> None:
    """With server.hosts set, a request is forwarded only when its Host is listed, and an
    absolute-form target only when it names the same listed host as Host (RFC 9112
    3.2.2); a mismatch is a 400 and reaches nothing."""
    proxy = await _proxy(make_proxy, upstream, HOSTS)
    raw = await send(proxy, request_bytes + CLOSE)
    assert _statuses(raw) == [status], raw[:300]
    forwarded = [s.raw_path for s in upstream.seen if s.raw_path != "/oauth/token"]
    assert forwarded == ([upstream_path] if upstream_path else [])
    if status == 421:
        assert b'"misdirected_request"' in raw


async def test_without_server_hosts_any_host_passes_and_absolute_form_is_refused(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """The default serves every Host name; absolute-form cannot then be told ours or not,
    so it is refused whatever it names."""
    proxy = await _proxy(make_proxy, upstream)
    raw = await send(proxy, b"GET /u/x HTTP/1.1\r\nHost: anything.example\r\n" + CLOSE)
    # HTTP/1.0 may omit Host (RFC 9112 3.2); the upstream's Host is written anyway.
    hostless = await send(proxy, b"GET /u/x HTTP/1.0\r\n\r\n")
    refused = await send(
        proxy, b"GET http://anything.example/u/x HTTP/1.1\r\nHost: anything.example\r\n" + CLOSE
    )
    assert _statuses(raw) == [200]
    assert b" 200 " in hostless.split(b"\r\n", 1)[0]
    assert _statuses(refused) == [400]
    assert [s.raw_path for s in upstream.seen if s.raw_path != "/oauth/token"] == ["/x", "/x"]


async def test_malformed_authorization_is_not_echoed_anywhere(
    make_proxy: ProxyFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    """A header with a NUL gets a 400 whose bytes hold nothing of the request, and no log
    line repeats it (the end-of-run scan of every log line watches for it too)."""
    LEAK_WATCH.add("S3CRET")
    proxy = await _proxy(make_proxy, upstream)
    raw = await send(
        proxy, b"GET /u/x HTTP/1.1\r\n" + H + b"Authorization: Bearer S3CRET\x00\r\n\r\n"
    )
    assert _statuses(raw) == [400]
    assert b"S3CRET" not in raw
    assert "S3CRET" not in caplog.text


@pytest.mark.parametrize(
    "path",
    [
        b"/u/../x",
        b"/u/%2e%2e/x",
        b"/u/.%2e/x",
        b"/u%2f..%2fx",
        b"/u/..\\x",
        b"/u/;/../x",
        b"//evil.example/x",
        b"/http://169.254.169.254/",
    ],
)
async def test_paths_never_leave_the_routes_base(
    make_proxy: ProxyFactory, upstream: Upstream, path: bytes
) -> None:
    """Traversal and scheme tricks get 400 or 404, and nothing reaches the upstream."""
    proxy = await _proxy(make_proxy, upstream)
    raw = await send(proxy, b"GET " + path + b" HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert _statuses(raw)[0] in (400, 404)
    assert [s for s in upstream.seen if s.raw_path != "/oauth/token"] == []


async def test_connection_header_cannot_remove_our_token_or_forwarding_headers(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """Listing Authorization or X-Forwarded-For in Connection removes the client's own,
    never the token or the X-Forwarded-For the proxy sets; two client Authorization headers
    never make two tokens upstream."""
    proxy = await _proxy(make_proxy, upstream)
    raw = await send(
        proxy,
        b"GET /u/x HTTP/1.1\r\n" + H + b"Connection: close, Authorization, X-Forwarded-For\r\n"
        b"Authorization: Bearer client-1\r\nAuthorization: Bearer client-2\r\n"
        b"X-Forwarded-For: 6.6.6.6\r\n\r\n",
    )
    assert _statuses(raw) == [200]
    seen = upstream.last
    assert seen.all("Authorization") == [f"Bearer {TOKEN}"]
    assert seen.all("X-Forwarded-For") == ["127.0.0.1"]


@pytest.mark.parametrize(
    "name",
    [
        "X_Forwarded_For",
        "X.Forwarded.For",
        "X_Forwarded.Proto",
        "X_Forwarded_Host",
        "X.Forwarded_Port",
        "X_Real_IP",
        "X.Real.Ip",
        "Content_Length",
        "Transfer_Encoding",
        "X_Request_ID",
    ],
)
async def test_forwarding_header_aliases_are_dropped(
    make_proxy: ProxyFactory, upstream: Upstream, name: str
) -> None:
    """A guarded header spelt with '_' or '.' (read as its '-' form by CGI-style servers)
    never reaches the upstream; other names with '_' pass."""
    proxy = await _proxy(make_proxy, upstream)
    raw = await send(
        proxy,
        b"GET /u/x HTTP/1.1\r\n"
        + H
        + name.encode()
        + b": 6.6.6.6\r\nX_Custom_Header: kept\r\nConnection: close\r\n\r\n",
    )
    assert _statuses(raw) == [200]
    names = [seen_name.lower() for seen_name, _ in upstream.last.headers]
    assert name.lower() not in names
    assert "x_custom_header" in names
    assert "6.6.6.6" not in str(upstream.last.headers)


async def test_forwarding_headers_are_extended_only_for_trusted_proxies(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """From a trusted proxy the chain grows; from anyone else it is replaced."""
    request = (
        b"GET /u/x HTTP/1.1\r\n" + H + b"X-Forwarded-For: 203.0.113.7\r\n"
        b"X-Forwarded-Proto: https\r\nForwarded: for=203.0.113.7\r\nConnection: close\r\n\r\n"
    )
    untrusted = await _proxy(make_proxy, upstream)
    await send(untrusted, request)
    assert upstream.last.all("X-Forwarded-For") == ["127.0.0.1"]
    assert upstream.last.all("X-Forwarded-Proto") == ["http"]
    assert upstream.last.all("Forwarded") == []
    trusted = await _proxy(make_proxy, upstream, 'trusted_proxies = ["127.0.0.0/8"]')
    await send(trusted, request)
    assert upstream.last.all("X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
    assert upstream.last.all("X-Forwarded-Proto") == ["https"]
    assert upstream.last.all("Forwarded") == ["for=203.0.113.7, for=127.0.0.1"]


async def test_via_is_added_and_a_loop_is_refused(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """Via carries our pseudonym both ways; a request that already carries it is a loop."""
    proxy = await _proxy(make_proxy, upstream, 'via = "gw-test"')
    raw = await send(
        proxy, b"GET /u/x HTTP/1.1\r\n" + H + b"Via: 1.0 edge\r\nConnection: close\r\n\r\n"
    )
    assert _statuses(raw) == [200]
    assert upstream.last.all("Via") == ["1.0 edge, 1.1 gw-test"]
    assert b"\r\nVia: 1.1 gw-test\r\n" in raw
    count = len(upstream.seen)
    raw = await send(
        proxy, b"GET /u/x HTTP/1.1\r\n" + H + b"Via: 1.1 gw-test\r\nConnection: close\r\n\r\n"
    )
    assert _statuses(raw) == [508]
    assert len(upstream.seen) == count


async def test_max_forwards_is_honoured_for_options(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """OPTIONS with Max-Forwards: 0 is answered by the proxy; otherwise it is decremented."""
    proxy = await _proxy(make_proxy, upstream)
    raw = await send(
        proxy, b"OPTIONS /u/x HTTP/1.1\r\n" + H + b"Max-Forwards: 0\r\nConnection: close\r\n\r\n"
    )
    assert _statuses(raw) == [200]
    assert [s for s in upstream.seen if s.method == "OPTIONS"] == []
    await send(
        proxy, b"OPTIONS /u/x HTTP/1.1\r\n" + H + b"Max-Forwards: 3\r\nConnection: close\r\n\r\n"
    )
    assert upstream.last.all("Max-Forwards") == ["2"]
    # Only OPTIONS (and TRACE, refused) use it (RFC 9110 7.6.2): other methods pass it as is.
    await send(
        proxy, b"GET /u/x HTTP/1.1\r\n" + H + b"Max-Forwards: 0\r\nConnection: close\r\n\r\n"
    )
    assert upstream.last.method == "GET"
    assert upstream.last.all("Max-Forwards") == ["0"]


async def test_h2c_upgrade_is_stripped_never_a_tunnel(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """An h2c upgrade request is answered as plain HTTP/1.1; Upgrade and HTTP2-Settings
    never reach the upstream and nothing after the request is read as a tunnel."""
    proxy = await _proxy(make_proxy, upstream)
    raw = await send(
        proxy,
        b"GET /u/x HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    )
    assert _statuses(raw) == [200]
    names = {name.lower() for name, _ in upstream.last.headers}
    assert not names & {"upgrade", "http2-settings"}
    assert [s for s in upstream.seen if s.method == "PRI"] == []


async def test_byte_by_byte_oversized_header_gets_431_with_bounded_memory(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """A 100 KB header sent a byte per segment is cut off at the head limit (431), and
    the proxy never holds the whole header."""
    proxy = await _proxy(make_proxy, upstream)
    host, port = proxy.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    sock = writer.transport.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(b"GET /u/x HTTP/1.1\r\n" + H + b"X-Long: ")
    answer = asyncio.create_task(reader.read(-1))  # done once the proxy has closed
    sent = 0
    try:
        while sent < 100_000 and not answer.done():
            writer.write(b"a")  # one byte, one send
            await asyncio.sleep(0)  # the proxy reads it before the next one goes out
            sent += 1
    except ConnectionError:
        pass  # the proxy answered and closed before we were done: what we want
    raw = await asyncio.wait_for(answer, 10)
    writer.close()
    assert _statuses(raw) == [431]
    # Answered (and closed) at its 64 KiB head limit, long before the 100 KB was sent:
    # what the proxy held for this head is bounded by that limit, not by the header.
    assert 64 * 1024 - 100 < sent < 80_000, sent


async def test_many_pipelined_requests_answer_in_order(
    make_proxy: ProxyFactory, scripted: Scripted
) -> None:
    """10,000 pipelined GETs on one connection are all answered, in order."""
    proxy = await make_proxy(f'[[routes]]\nprefix = "/api"\nupstream = "{scripted.url}"\n')
    count = 10_000
    requests = b"".join(b"GET /api/%d HTTP/1.1\r\n" % i + H + b"\r\n" for i in range(count))
    requests += b"GET /api/last HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    raw = await send(proxy, requests, timeout=60)
    assert _statuses(raw) == [200] * (count + 1)
    # Parsing pauses 16 requests ahead: the whole process (client, proxy and upstream in
    # one) grows far less than 10,000 requests' worth of state would need.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000
    assert [p for _, p, _ in scripted.arrivals] == [f"/{i}" for i in range(count)] + ["/last"]
    assert time.monotonic() - started < 60


async def test_connection_cap_answers_a_fast_503(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """Past max_connections a new connection gets 503 overloaded at once."""
    proxy = await _proxy(make_proxy, upstream, "max_connections = 2")
    host, port = proxy.removeprefix("http://").rsplit(":", 1)
    held = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
    await asyncio.sleep(0.05)
    raw = await send(proxy, b"GET /u/x HTTP/1.1\r\n" + H + b"\r\n")
    assert _statuses(raw) == [503]
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["error"] == "overloaded"
    for _, writer in held:
        writer.close()


def _open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line")


async def test_low_soft_descriptor_limit_is_raised_to_fit_max_connections(
    upstream: Upstream, tmp_path: Path
) -> None:
    """Started under a shell's usual soft limit (here 256), the proxy raises its own soft
    limit so that max_connections can really be reached (2 descriptors a connection)."""
    config = tmp_path / "routes.toml"
    config.write_text(
        "[server]\nmax_connections = 1000\n"
        f'[[routes]]\nprefix = "/u"\nupstream = "{upstream.url}"\n'
    )
    proxy = await start_proxy(config, limits={resource.RLIMIT_NOFILE: (256, 8192)})
    try:
        limits = _open_files_limit(proxy.pid)
    finally:
        await proxy.stop()
    assert limits == (2 * 1000 + 128, 8192)
    assert not any('"fd_limit_low"' in line for line in proxy.lines)


async def test_too_low_hard_descriptor_limit_lowers_the_cap_and_says_so(
    upstream: Upstream, tmp_path: Path
) -> None:
    """When even the hard limit cannot hold max_connections, the cap is lowered to what
    fits and a start-up warning names the key: connections past it get the fast 503,
    rather than accept() failing and clients hanging."""
    config = tmp_path / "routes.toml"
    config.write_text(
        "[server]\nmax_connections = 1000\n"
        f'[[routes]]\nprefix = "/u"\nupstream = "{upstream.url}"\n'
    )
    # (200 - 128) // 2 = 36 fit
    proxy = await start_proxy(config, limits={resource.RLIMIT_NOFILE: (200, 200)})
    held: list[asyncio.StreamWriter] = []
    try:
        warnings = [json.loads(line) for line in proxy.lines if '"fd_limit_low"' in line]
        host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
        for _ in range(36):
            held.append((await asyncio.open_connection(host, int(port)))[1])
        await asyncio.sleep(0.1)
        raw = await send(proxy.url, b"GET /u/x HTTP/1.1\r\n" + H + b"\r\n")
    finally:
        for writer in held:
            writer.close()
        await proxy.stop()
    assert _statuses(raw) == [503]
    assert b'"overloaded"' in raw
    assert len(warnings) == 1
    assert warnings[0]["setting"] == "server.max_connections"
    assert (warnings[0]["configured"], warnings[0]["serving"]) == (1000, 36)


async def test_client_that_stops_sending_its_body_is_cut_off(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """A body that stops arriving for idle_timeout ends the request and its connection."""
    proxy = await _proxy(make_proxy, upstream, "idle_timeout = 0.5")
    host, port = proxy.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    # Larger than max_body, so it streams upstream while the client stalls.
    writer.write(b"POST /u/stream-upload HTTP/1.1\r\n" + H + b"Content-Length: 5000000\r\n\r\nabc")
    await writer.drain()
    started = time.monotonic()
    raw = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    assert time.monotonic() - started < 5
    assert b"200 OK" not in raw


GOOD = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood"


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\nevil\r\n0\r\n\r\n",
            502,
        ),
        (b"HTTP/1.1 200 OK\r\nX-Evil: a\x01b\r\nContent-Length: 4\r\n\r\nevil", 502),
        (
            b"HTTP/1.1 200 OK\r\nX-Big: "
            + b"e" * (1024 * 1024)
            + b"\r\nContent-Length: 4\r\n\r\nevil",
            502,
        ),
        # Four bytes as announced, then bytes nobody asked for: the answer stands, the
        # connection (and what came after it) is thrown away.
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfineHTTP/1.1 200 OK\r\n"
            b"Content-Length: 4\r\n\r\nEVIL",
            200,
        ),
    ],
    ids=["cl-and-te", "control-byte", "1mb-header", "longer-than-length"],
)
async def test_broken_upstream_answers_never_reach_a_client(
    make_proxy: ProxyFactory,
    raw_upstream: RawUpstreams,
    answer: bytes,
    status: int,
) -> None:
    """An upstream answer that breaks HTTP/1.1 is a 502 (or, for bytes past its length,
    dropped with the connection): nothing of it reaches this client or the next one."""
    upstream = await raw_upstream(answer, GOOD, GOOD)
    proxy = await make_proxy(
        f'[[routes]]\nprefix = "/r"\nupstream = "http://127.0.0.1:{upstream.port}"\n'
    )
    first = await send(proxy, b"GET /r/a HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    second = await send(proxy, b"GET /r/b HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert _statuses(first) == [status]
    for forbidden in (b"evil", b"EVIL", b"X-Evil", b"X-Big"):
        assert forbidden not in first
        assert forbidden not in second
    assert _statuses(second) == [200]
    assert second.endswith(b"good")


async def test_stray_upstream_bytes_on_an_idle_pooled_connection_reach_no_client(
    make_proxy: ProxyFactory,
) -> None:
    """Bytes an upstream sends after a complete answer, while its connection waits in the
    pool, get that connection dropped: the next client's request goes out on a fresh one
    and gets its own answer, never the stray one."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        first = len(writers) == 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(GOOD)
                if first:
                    await asyncio.sleep(0.05)  # the answer is complete; the proxy pools us
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        proxy = await make_proxy(
            f'[[routes]]\nprefix = "/r"\nupstream = "http://127.0.0.1:{port}"\n'
        )
        first = await send(proxy, b"GET /r/a HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
        await asyncio.sleep(0.2)  # the stray bytes have arrived on the idle connection
        second = await send(proxy, b"GET /r/b HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    finally:
        server.close()
        for writer in writers:
            writer.close()  # the pooled second connection is still open
    connections = len(writers)
    assert first.endswith(b"good")
    assert _statuses(second) == [200]
    assert second.endswith(b"good")
    assert b"EVIL" not in second
    assert connections == 2  # the desynchronised connection was not reused


async def test_buffered_chunked_put_survives_a_stale_pooled_connection(
    make_proxy: ProxyFactory,
) -> None:
    """A buffered chunked body within retry.max_body (here 100 KiB) is held in memory, so
    an idempotent PUT whose pooled connection turns out closed is sent again on a fresh
    one, as a body with a length would be."""
    writers: list[asyncio.StreamWriter] = []
    bodies: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        first_connection = len(writers) == 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if first_connection and bodies:
                    writer.close()  # keep-alive ended as the proxy reuses the connection
                    return
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                bodies.append(len(await reader.readexactly(int(length.group(1)) if length else 0)))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    size = 100 * 1024
    put = (
        b"PUT /r/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"%x\r\n%b\r\n0\r\n\r\n" % (size, b"y" * size)
    )
    try:
        proxy = await make_proxy(
            f'[[routes]]\nprefix = "/r"\nupstream = "http://127.0.0.1:{port}"\n'
        )
        answers = [await send(proxy, put), await send(proxy, put)]
    finally:
        server.close()
        for writer in writers:
            writer.close()
    assert [_statuses(a) for a in answers] == [[200], [200]]
    assert bodies == [size, size]
    assert len(writers) == 2  # the second PUT went out again on a new connection


async def test_upstream_reason_phrase_is_never_copied(
    make_proxy: ProxyFactory,
    raw_upstream: RawUpstreams,
) -> None:
    """The client sees the standard phrase for the status, never the upstream's text."""
    upstream = await raw_upstream(
        b"HTTP/1.1 404 <script>alert(1)</script>\r\nContent-Length: 0\r\n\r\n"
    )
    proxy = await make_proxy(
        f'[[routes]]\nprefix = "/r"\nupstream = "http://127.0.0.1:{upstream.port}"\n'
    )
    raw = await send(proxy, b"GET /r/a HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"script" not in raw


async def test_client_that_never_reads_is_cut_off_and_its_upstream_request_ends(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """A client that stops reading a large answer is cut after idle_timeout: the proxy
    does not hold the stream (or the upstream connection) for ever."""
    proxy = await _proxy(make_proxy, upstream, "idle_timeout = 0.5")
    host, port = proxy.removeprefix("http://").rsplit(":", 1)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, int(port)))
        await loop.sock_sendall(sock, b"GET /u/download?size=50000000 HTTP/1.1\r\n" + H + b"\r\n")
        await asyncio.sleep(3)  # read nothing
        received = 0
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5):
                received += len(chunk)
    finally:
        sock.close()
    assert received < 50_000_000  # the stream was cut, not delivered late
    raw = await send(proxy, b"GET /-/status HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    status = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert status["routes"]["/u"]["in_flight"] == 0  # its upstream request ended too


async def test_a_thousand_slowloris_connections_are_cut_while_others_are_served(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """1,000 connections that send a head a byte at a time are closed once header_timeout
    has passed, and a normal client is served throughout."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    try:
        proxy = await _proxy(make_proxy, upstream, "header_timeout = 1")
        host, port = proxy.removeprefix("http://").rsplit(":", 1)
        slow = [await asyncio.open_connection(host, int(port)) for _ in range(1000)]
        head = b"GET /u/x HTTP/1.1\r\nHost: p\r\nX-Slow: "
        served = 0
        for second in range(3):
            for _, writer in slow:
                if not writer.is_closing():
                    with contextlib.suppress(ConnectionError):
                        writer.write(head[second : second + 1])
            raw = await send(proxy, b"GET /u/ok HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
            served += _statuses(raw) == [200]
            await asyncio.sleep(1)
        cut = 0
        for reader, writer in slow:
            try:
                data = await asyncio.wait_for(reader.read(-1), 2)
                cut += data.startswith(b"HTTP/1.1 408 ") or data == b""
            except ConnectionError:
                cut += 1  # closed by the proxy while we were still trickling bytes
            except TimeoutError:
                pass  # still open: not cut
            writer.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert served == 3
    assert cut == 1000


class _CountingUpstream:
    """Counts every byte that reaches it; answers nothing (nothing should arrive)."""

    def __init__(self) -> None:
        self.received = 0
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.closed = 0

    def route(self, before: str = "", route_extra: str = "") -> str:
        return (
            f'{before}[[routes]]\nprefix = "/c"\nupstream = "http://127.0.0.1:{self.port}"\n'
            f"retry = {{ attempts = 1 }}\n{route_extra}"
        )

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                self.received += len(data)
            self.closed += 1  # the proxy closed its end
        writer.close()


@contextlib.asynccontextmanager
async def _counting_upstream() -> AsyncIterator[_CountingUpstream]:
    counting = _CountingUpstream()
    server = await asyncio.start_server(counting.handle, "127.0.0.1", 0)
    counting.port = server.sockets[0].getsockname()[1]
    try:
        yield counting
    finally:
        server.close()
        for writer in counting.writers:
            writer.close()  # a connection the proxy still holds open


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nab\r\n0\r\n\r\n",
        b"5\r\nhello\r\n3\r\nab\r\n0\r\n\r\n",  # a chunk shorter than its size line
        b"5\r\nhello\r\n" + b"1\r\nx\r\n" * 100 + b"g\r\n",
        # Past the 64 KiB kept in memory: buffered on disk, still checked to the end.
        b"5\r\nhello\r\n" + CHUNK_16K * 64 + b"zz\r\n",
    ],
    ids=["bad-size", "short-chunk", "bad-size-later", "bad-size-after-1MiB"],
)
async def test_malformed_chunked_body_sends_not_a_byte_upstream(
    make_proxy: ProxyFactory, upstream: Upstream, body: bytes
) -> None:
    """A chunked body is read whole before anything is sent: a malformed chunk anywhere in
    it gets our 400, and the upstream receives not one byte (not even the head and token)."""
    async with _counting_upstream() as counting:
        proxy = await make_proxy(counting.route())
        raw = await send(proxy, CHUNKED_POST + body)
        await asyncio.sleep(0.1)
    assert _statuses(raw) == [400]
    assert counting.received == 0


async def test_chunked_body_over_the_buffer_limit_gets_413_and_sends_nothing(
    make_proxy: ProxyFactory,
) -> None:
    """A chunked body longer than server.max_buffered_body is refused (413) before the
    upstream sees a byte; one just under it goes through."""
    async with _counting_upstream() as counting:
        proxy = await make_proxy(counting.route("[server]\nmax_buffered_body = 131072\n"))
        # The whole body is sent: the connection closes after the 413 all the same.
        raw = await send(proxy, CHUNKED_POST + CHUNK_16K * 9 + b"0\r\n\r\n")
        await asyncio.sleep(0.1)
        refused = counting.received
        fits = await send(proxy, CHUNKED_POST + CHUNK_16K * 8 + b"0\r\n\r\n", timeout=1)
        await asyncio.sleep(0.1)
    assert _statuses(raw) == [413]
    assert b'"body_too_large"' in raw
    assert refused == 0
    assert _statuses(fits) == []  # forwarded: the counting upstream never answers
    assert counting.received > 8 * 0x4000


async def test_spool_space_is_shared_and_bounded_by_max_spooled_total(
    make_proxy: ProxyFactory,
) -> None:
    """Buffered bodies together may take at most server.max_spooled_total of disk: one that
    would pass it gets 503 overloaded (nothing sent upstream), and the space comes back
    once the body holding it has been sent."""
    async with _counting_upstream() as counting:
        proxy = await make_proxy(counting.route("[server]\nmax_spooled_total = 300000\n"))
        host, port = proxy.removeprefix("http://").rsplit(":", 1)
        # The first upload holds 256 KiB of spool while its client is still sending.
        _, holder = await asyncio.open_connection(host, int(port))
        holder.write(CHUNKED_POST + CHUNK_16K * 16)
        await asyncio.sleep(0.3)
        refused = await send(proxy, CHUNKED_POST + CHUNK_16K * 16 + b"0\r\n\r\n")
        await asyncio.sleep(0.1)
        nothing_yet = counting.received
        holder.write(b"0\r\n\r\n")  # the first body ends, is sent, and frees its space
        async with asyncio.timeout(5):
            while counting.received < 16 * 0x4000:
                await asyncio.sleep(0.01)
        holder.close()
        counting.received = 0
        later = await send(proxy, CHUNKED_POST + CHUNK_16K * 16 + b"0\r\n\r\n", timeout=1)
        await asyncio.sleep(0.1)
    assert _statuses(refused) == [503]
    assert b'"overloaded"' in refused
    assert nothing_yet == 0
    assert _statuses(later) == []  # forwarded: the counting upstream never answers
    assert counting.received > 16 * 0x4000


async def test_spool_space_still_counts_across_a_reload(make_proxy: ProxyFactory) -> None:
    """A body spooled under the old config still takes its space after a reload (SIGHUP):
    the budget belongs to the process, not to one config."""
    async with _counting_upstream() as counting:
        toml = counting.route("[server]\nmax_spooled_total = 300000\n")
        proxy = await make_proxy.serve(toml)
        _, holder = await asyncio.open_connection(*proxy.address)
        holder.write(CHUNKED_POST + CHUNK_16K * 16)
        await asyncio.sleep(0.3)
        proxy.state.reload(config_module.loads(toml, {}))
        refused = await send(proxy.url, CHUNKED_POST + CHUNK_16K * 16 + b"0\r\n\r\n")
        holder.close()
        await proxy.stop()
    assert _statuses(refused) == [503]


async def test_chunked_body_that_cannot_be_buffered_gets_500_and_sends_nothing(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """When the spool directory is gone (or the disk full), a large chunked body gets our
    500, not a half-written request upstream."""
    spool = tmp_path / "spool"
    spool.mkdir()
    async with _counting_upstream() as counting:
        proxy = await make_proxy(counting.route(f'[server]\nspool_dir = "{spool}"\n'))
        spool.rmdir()
        raw = await send(
            proxy,
            CHUNKED_POST + CHUNK_16K * 8 + b"0\r\n\r\n",
        )
        await asyncio.sleep(0.1)
    assert _statuses(raw) == [500]
    assert b'"internal_error"' in raw
    assert counting.received == 0


async def test_a_full_disk_while_buffering_is_a_logged_500_and_sends_nothing(
    tmp_path: Path,
) -> None:
    """A spool file that cannot grow (here RLIMIT_FSIZE; a full disk behaves alike) ends
    the request with our 500 and a body_spool_failed line, not a traceback, and the
    upstream sees nothing."""
    async with _counting_upstream() as counting:
        config = tmp_path / "routes.toml"
        config.write_text(counting.route())
        proxy = await start_proxy(config, limits={resource.RLIMIT_FSIZE: (100_000, 100_000)})
        host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                CHUNKED_POST + CHUNK_16K * 6  # 96 KiB: still fits
            )
            await asyncio.sleep(0.3)
            # A last small chunk waits in the file's write buffer: the limit is crossed
            # only when the spool is flushed, after the body's end.
            writer.write(b"1388\r\n" + b"x" * 5000 + b"\r\n0\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(-1), 5)
            writer.close()
            await asyncio.sleep(0.1)
        finally:
            await proxy.stop()
    assert _statuses(raw) == [500]
    assert counting.received == 0
    assert any('"body_spool_failed"' in line for line in proxy.lines)
    assert not any('"handler_failed"' in line for line in proxy.lines)


async def test_unbuffered_route_streams_a_long_chunked_body(
    make_proxy: ProxyFactory,
) -> None:
    """With request_buffering off the upstream gets the head and the first 64 KiB before
    the body has ended: the documented trade. A bad chunk after that is still a 400 for
    the client, and the upstream's request is left unterminated on a closed connection."""
    async with _counting_upstream() as counting:
        proxy = await make_proxy(counting.route(route_extra="request_buffering = false\n"))
        raw = await send(
            proxy,
            CHUNKED_POST + CHUNK_16K * 8 + b"zz\r\n",
        )
        async with asyncio.timeout(5):
            while not counting.writers or not counting.closed:
                await asyncio.sleep(0.01)
    assert _statuses(raw) == [400]
    assert counting.received >= 64 * 1024
    assert counting.closed == 1  # the proxy dropped the upstream connection


async def test_small_chunked_body_is_forwarded_whole_with_its_length(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """A well-formed small chunked body reaches the upstream intact, framed by length."""
    proxy = await _proxy(make_proxy, upstream)
    raw = await send(
        proxy,
        b"POST /u/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    assert _statuses(raw) == [200]
    assert upstream.last.body == b"hello world"
    assert upstream.last.all("Content-Length") == ["11"]


async def test_every_client_forwarding_claim_is_dropped_from_untrusted_peers(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """X-Forwarded-Port, -Prefix, -Ssl and X-Real-IP from an untrusted client never pass."""
    proxy = await _proxy(make_proxy, upstream)
    await send(
        proxy,
        b"GET /u/x HTTP/1.1\r\n" + H + b"X-Forwarded-Port: 443\r\nX-Forwarded-Prefix: /admin\r\n"
        b"X-Forwarded-Ssl: on\r\nX-Real-IP: 10.0.0.1\r\nConnection: close\r\n\r\n",
    )
    names = {name.lower() for name, _ in upstream.last.headers}
    assert not names & {"x-forwarded-port", "x-forwarded-prefix", "x-forwarded-ssl", "x-real-ip"}


async def test_silent_connection_is_closed_after_header_timeout(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """A connection that never sends a byte is closed after header_timeout, not held."""
    proxy = await _proxy(make_proxy, upstream, "header_timeout = 0.5")
    host, port = proxy.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    data = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert data == b"" or data.startswith(b"HTTP/1.1 408 ")


async def test_in_flight_cap_answers_a_fast_503(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """Past max_in_flight a request gets 503 overloaded at once, never queued upstream."""
    proxy = await _proxy(make_proxy, upstream, "max_in_flight = 1")
    slow = asyncio.create_task(
        send(proxy, b"GET /u/slow?s=1 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    )
    await asyncio.sleep(0.3)
    raw = await send(proxy, b"GET /u/x HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert _statuses(raw) == [503]
    assert b'"overloaded"' in raw
    assert _statuses(await slow) == [200]


async def test_refusals_are_counted_and_methods_never_mint_labels(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """Requests refused before any handler are counted; an unusual method is counted as
    'other', never as a label of the client's choosing."""
    proxy = await _proxy(make_proxy, upstream)
    await send(proxy, b"GET /u/x HTTP/2.0\r\n" + H + b"\r\n")
    await send(proxy, b"PROPFIND /u/x HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    raw = await send(proxy, b"GET /-/metrics HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert b'proxy_requests_total{method="other",route="refused",status_class="5xx"} 1.0' in raw
    assert b'method="other",route="/u"' in raw
    assert b"PROPFIND" not in raw


async def test_upstream_connect_timeout_is_a_504(make_proxy: ProxyFactory) -> None:
    """An upstream that never accepts the connection is a 504 after timeout.connect."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # a backlog that is full at once: further SYNs go unanswered
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        proxy = await make_proxy(
            f'[[routes]]\nprefix = "/t"\nupstream = "http://127.0.0.1:{port}"\n'
            "timeout = { connect = 0.5, read = 5 }\n"
        )
        raw = await send(proxy, b"GET /t/x HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    assert _statuses(raw) == [504]
    assert b'"upstream_timeout"' in raw


@pytest.mark.parametrize("value", [b"-1", b"x", b"1, 2"])
async def test_invalid_max_forwards_is_refused(
    make_proxy: ProxyFactory, upstream: Upstream, value: bytes
) -> None:
    """A Max-Forwards that is not one whole number is a 400, never forwarded."""
    proxy = await _proxy(make_proxy, upstream)
    raw = await send(
        proxy,
        b"OPTIONS /u/x HTTP/1.1\r\n"
        + H
        + b"Max-Forwards: "
        + value
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert _statuses(raw) == [400]
    assert [s for s in upstream.seen if s.method == "OPTIONS"] == []
