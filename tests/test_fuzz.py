"""Generated hostile requests against a running proxy (hypothesis).

The proxy and a recording upstream run in an event loop on a thread of their own; each
example is raw bytes on a fresh socket. Whatever is sent: the proxy keeps serving, every
5xx it gives is its own (JSON with X-Proxy-Error), no byte of the injected token or the
client secret comes back, and a request the proxy refused never reached the upstream.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import LEAK_WATCH
from .processes import serve
from .rawclient import exchange

TOKEN = "fuzz-token-0123456789"
SECRET = "fuzz-client-secret-42"
LEAK_WATCH.update({TOKEN, SECRET})  # the end-of-run scan of every log line watches these


@dataclass
class Running:
    """The proxy serving in a thread of its own, and the paths its upstream saw."""

    port: int = 0
    seen: list[bytes] = field(default_factory=list)
    stop: Callable[[], object] = lambda: None  # set once serving: ends it, from any thread


def _serve(running: Running, ready: threading.Event) -> None:
    async def main() -> None:
        async def answer(request: web.Request) -> web.Response:
            if request.path == "/token":
                return web.json_response(
                    {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600}
                )
            # Noted on the head, before the body is read: a forwarded head whose body never
            # completes still counts.
            running.seen.append(request.raw_path.encode("utf-8", "surrogateescape"))
            await request.read()
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        upstream = web.AppRunner(app, access_log=None)
        await upstream.setup()
        site = web.TCPSite(upstream, "127.0.0.1", 0)
        await site.start()
        up_port = upstream.addresses[0][1]
        proxy = await serve(
            f'[[routes]]\nprefix = "/api"\nupstream = "http://127.0.0.1:{up_port}"\n'
            'auth = "a"\nretry = { attempts = 1 }\n'
            f'[auth.a]\ntype = "client_credentials"\n'
            f'token_url = "http://127.0.0.1:{up_port}/token"\n'
            f'client_id = "fuzz"\nclient_secret = "{SECRET}"\n'
        )
        running.port = proxy.address[1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        running.stop = lambda: loop.call_soon_threadsafe(stop.set)
        ready.set()
        await stop.wait()
        await proxy.stop()
        await upstream.cleanup()

    asyncio.run(main())


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    running = Running()
    ready = threading.Event()
    thread = threading.Thread(target=_serve, args=(running, ready), daemon=True)
    thread.start()
    assert ready.wait(20)
    yield running
    running.stop()
    thread.join(10)


SENTINEL = b"GET /-/health HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"


async def _exchange(port: int, data: bytes) -> bytes:
    """What came back before the proxy closed, reset, or kept silent for a second."""
    return (await exchange(("127.0.0.1", port), data, timeout=1.0)).data


TOKEN_CHARS = st.sampled_from(
    list(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
)
tokens = st.lists(TOKEN_CHARS, min_size=1, max_size=12).map(bytes)
anything = st.binary(max_size=40)
methods = st.one_of(
    st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"TRACE", b"CONNECT", b"PRI"]),
    st.sampled_from([b"GET", b"POST"]),
    tokens,
)
# Mostly well-formed requests with hostile parts, so that many of them are forwarded and
# the answers the upstream gives are checked too, not only our refusals.
plain_paths = st.lists(
    st.sampled_from([b"x", b"items", b"%2F", b"a%20b", b"q?x=1&x=2", b"~u", b"%00"]), max_size=3
).map(lambda parts: b"/api/" + b"/".join(parts))
targets = st.one_of(
    plain_paths,
    plain_paths,
    plain_paths,
    st.builds(
        lambda a, b: b"/api/" + a + b,
        st.sampled_from([b"x", b"..", b"%2e%2e", b";", b"/"]),
        anything,
    ),
    st.sampled_from(
        [b"*", b"//evil.example/x", b"http://evil.example/api/x", b"/-/status", b"/api"]
    ),
    anything,
)
versions = st.sampled_from(
    [b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b""]
)
header_names = st.one_of(
    st.sampled_from(
        [
            b"Host",
            b"Content-Length",
            b"Transfer-Encoding",
            b"Connection",
            b"Authorization",
            b"X-Forwarded-For",
            b"X_Forwarded_For",
            b"Upgrade",
            b"Expect",
            b"Via",
            b"Max-Forwards",
        ]
    ),
    tokens,
)
printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(
    str.encode
)
header_values = st.one_of(
    st.sampled_from([b"chunked", b"3", b"-1", b"close", b"h2c", b"100-continue", b"0", b"p"]),
    printable,
    printable,
    anything,
)
benign_names = st.sampled_from([b"Accept", b"X-Custom", b"User-Agent", b"Cookie", b"X-Request-ID"])
headers = st.lists(
    st.tuples(st.one_of(benign_names, benign_names, header_names), header_values), max_size=6
)
bodies = st.one_of(
    st.just(b""), st.sampled_from([b"0\r\n\r\n", b"3\r\nabc\r\n0\r\n\r\n"]), anything
)


def _request(
    method: bytes,
    target: bytes,
    version: bytes,
    with_host: bool,
    header_list: list[tuple[bytes, bytes]],
    body: bytes,
) -> bytes:
    head = method + b" " + target + (b" " + version if version else b"") + b"\r\n"
    if with_host:
        head += b"Host: p\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in header_list)
    return head + b"\r\n" + body


def _well_formed(
    method: bytes, target: bytes, header_list: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    if body:
        header_list = [*header_list, (b"Content-Length", str(len(body)).encode())]
    return _request(method, target, b"HTTP/1.1", True, header_list, body)


benign_headers = st.lists(st.tuples(benign_names, printable), max_size=5)
# Half well-formed requests with odd but legal parts (forwarded, so the upstream's answers
# are checked too), half hostile ones (refused, so nothing may reach the upstream).
requests = st.one_of(
    st.builds(
        _well_formed,
        st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH"]),
        plain_paths,
        benign_headers,
        st.binary(max_size=64),
    ),
    st.builds(_request, methods, targets, versions, st.booleans(), headers, bodies),
)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(requests)
async def test_generated_requests_never_break_the_proxy_or_leak(
    running: Running, request: bytes
) -> None:
    """Whatever arrives: no crash, no 5xx that is not ours, no token or secret in any
    answer, and nothing refused ever reaches the upstream."""
    before = len(running.seen)
    # A health check pipelined behind it ends the connection once the request is answered
    # (or, if the request swallowed it as a body, the read times out: also fine).
    raw = await _exchange(running.port, request + SENTINEL)
    for credential in (TOKEN.encode(), SECRET.encode()):
        # Not the whole value, nor any 8-byte piece of it.
        for offset in range(len(credential) - 7):
            assert credential[offset : offset + 8] not in raw
    answers = list(re.finditer(rb"HTTP/1\.1 (\d{3}) [^\r]*\r\n((?:[^\r]+\r\n)*)\r\n", raw))
    for match in answers:
        if match.group(1).startswith(b"5"):
            assert b"X-Proxy-Error: " in match.group(2), raw[:400]
    first = answers[0] if answers else None
    if (
        first is not None
        and first.group(1).startswith(b"4")
        and b"X-Proxy-Error: " in first.group(2)
    ):
        # The proxy refused it (no route, bad framing, bad target, unknown Host...): the
        # upstream saw not even its head (the recorder notes heads before any body).
        assert len(running.seen) == before, (raw[:300], running.seen[before:])
    # Still serving: a plain request right after gets its answer.
    assert (await _exchange(running.port, SENTINEL)).startswith(b"HTTP/1.1 200 OK")


async def test_the_fuzzer_reaches_the_upstream(running: Running) -> None:
    """The fuzz test is only worth something if many of its requests get through."""
    assert len(running.seen) > 100  # of the 400 generated (this test runs after them)
    before = len(running.seen)
    raw = await _exchange(
        running.port, b"GET /api/x HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert len(running.seen) == before + 1


async def test_status_and_metrics_never_show_a_credential(running: Running) -> None:
    """After all that traffic, /-/status and /-/metrics hold no token or secret (metric
    labels included)."""
    for path in (b"/-/status", b"/-/metrics"):
        raw = await _exchange(
            running.port, b"GET " + path + b" HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
        )
        assert raw.startswith(b"HTTP/1.1 200 OK")
        assert TOKEN.encode() not in raw
        assert SECRET.encode() not in raw
