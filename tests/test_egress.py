"""Egress through a forward proxy: upstreams and token endpoints reached through a real
CONNECT proxy (Debian's tinyproxy, `make tools` installs it), shown by its own log."""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpServer
from structlog.testing import capture_logs

from proxy import config
from proxy.__main__ import main
from proxy.errors import ConfigError
from proxy.http.client import Pool
from proxy.http.egress import EgressError, NoProxy, parse_proxy_url
from proxy.observe.metrics import Metrics
from proxy.runtime import Runtime
from proxy.sandbox import SandboxSettings, build_sandbox_app

from .conftest import LEAK_WATCH, ProxyFactory, Upstream

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
USER, PASSWORD = "egress-user", "egress-pass-5f1c9e"
LEAK_WATCH.add(PASSWORD)
LEAK_WATCH.add(base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class TinyProxy:
    """A tinyproxy on 127.0.0.1; ``requests()`` are the request lines its log recorded."""

    port: int
    log: Path
    process: subprocess.Popen[bytes]

    def url(self, credentials: str | None = f"{USER}:{PASSWORD}") -> str:
        return f"http://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}"

    def requests(self) -> list[str]:
        text = self.log.read_text() if self.log.exists() else ""
        return [line.split("): ", 1)[1] for line in text.splitlines() if "Request (" in line]


def _start_tinyproxy(directory: Path, *lines: str) -> TinyProxy:
    port = _free_port()
    log = directory / f"tinyproxy-{port}.log"
    conf = directory / f"tinyproxy-{port}.conf"
    conf.write_text(
        "\n".join(
            [
                f"Port {port}",
                "Listen 127.0.0.1",
                "Timeout 30",
                "LogLevel Connect",
                f'LogFile "{log}"',
                "MaxClients 50",
                f"BasicAuth {USER} {PASSWORD}",
                *lines,
            ]
        )
        + "\n"
    )
    process = subprocess.Popen([TINYPROXY, "-d", "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return TinyProxy(port, log, process)
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.02)
    process.kill()
    raise AssertionError(f"tinyproxy did not start: {conf.read_text()}")


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[TinyProxy]:
    """A CONNECT proxy that wants credentials."""
    proxy = _start_tinyproxy(tmp_path)
    yield proxy
    proxy.process.terminate()
    proxy.process.wait(5)


@dataclass
class TlsUpstream:
    port: int
    ca_file: Path


@pytest.fixture
async def tls_upstream(aiohttp_server: AiohttpServer, tmp_path: Path) -> TlsUpstream:
    """An https upstream on 127.0.0.1 with a private CA (names 127.0.0.1 and localhost);
    it answers with whether it saw a bearer token."""

    async def hello(request: web.Request) -> web.Response:
        bearer = request.headers.get("Authorization", "").startswith("Bearer ")
        return web.json_response({"tls": True, "bearer": bearer})

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    app = web.Application()
    app.router.add_get("/hello", hello)
    server = await aiohttp_server(app, host="127.0.0.1", ssl=server_ctx)
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    assert server.port is not None
    return TlsUpstream(server.port, ca_path)


@pytest.fixture
async def sandbox(aiohttp_server: AiohttpServer) -> str:
    server = await aiohttp_server(build_sandbox_app(SandboxSettings()), host="127.0.0.1")
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable of the test runner's own leaks into a test."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def _config(server: str, up: TlsUpstream, sandbox: str, host: str = "127.0.0.1") -> str:
    return (
        f"[server]\n{server}\n"
        f'[[routes]]\nprefix = "/api"\nupstream = "https://{host}:{up.port}"\n'
        f'ca_file = "{up.ca_file}"\nauth = "vendor"\n'
        f'[auth.vendor]\ntype = "client_credentials"\n'
        f'token_url = "{sandbox}/cognito/oauth2/token"\n'
        f'client_id = "sandbox-travtus-client"\nclient_secret = "sandbox-travtus-secret"\n'
    )


async def _get(url: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession() as client, client.get(url) as response:
        return response.status, CIMultiDict(response.headers), await response.read()


async def test_upstream_and_token_endpoint_go_through_the_egress_proxy(
    tinyproxy: TinyProxy,
    tls_upstream: TlsUpstream,
    sandbox: str,
    make_proxy: ProxyFactory,
    clean_env: pytest.MonkeyPatch,
) -> None:
    """With egress_proxy set to a URL with credentials, the https upstream is reached
    through a CONNECT tunnel and the token endpoint through the same proxy: its log shows
    both, the answers are the upstream's, with a token fetched through the proxy, and the
    tunnel is a pooled connection that later requests reuse."""
    proxy = await make_proxy(_config(f'egress_proxy = "{tinyproxy.url()}"', tls_upstream, sandbox))
    for _ in range(3):
        status, _, body = await _get(f"{proxy}/api/hello")
        assert status == 200, body
        assert body == b'{"tls": true, "bearer": true}'
    assert sorted(tinyproxy.requests()) == [
        f"CONNECT 127.0.0.1:{tls_upstream.port} HTTP/1.1",
        f"POST {sandbox}/cognito/oauth2/token HTTP/1.1",
    ]


@pytest.mark.parametrize("mode", ["env", "url"])
async def test_no_proxy_exempts_a_host(
    tinyproxy: TinyProxy,
    tls_upstream: TlsUpstream,
    sandbox: str,
    make_proxy: ProxyFactory,
    clean_env: pytest.MonkeyPatch,
    mode: str,
) -> None:
    """An exempt host is reached directly: with egress_proxy = "env" as NO_PROXY says
    (HTTPS_PROXY / http_proxy name the proxy), with a URL as egress_no_proxy says. The
    upstream named localhost goes direct, the token endpoint on 127.0.0.1 through the
    proxy."""
    exempt = "example.com, .localhost,10.0.0.0/8"
    if mode == "env":
        clean_env.setenv("HTTPS_PROXY", tinyproxy.url())
        clean_env.setenv("http_proxy", tinyproxy.url())
        clean_env.setenv("NO_PROXY", exempt)
        server = 'egress_proxy = "env"'
    else:
        clean_env.setenv("NO_PROXY", "*")  # read only with "env"
        server = f'egress_proxy = "{tinyproxy.url()}"\negress_no_proxy = "{exempt}"'
    proxy = await make_proxy(_config(server, tls_upstream, sandbox, host="localhost"))
    status, _, body = await _get(f"{proxy}/api/hello")
    assert status == 200, body
    assert tinyproxy.requests() == [f"POST {sandbox}/cognito/oauth2/token HTTP/1.1"]


async def test_without_the_key_the_environment_is_ignored(
    tinyproxy: TinyProxy,
    tls_upstream: TlsUpstream,
    sandbox: str,
    make_proxy: ProxyFactory,
    clean_env: pytest.MonkeyPatch,
) -> None:
    """HTTPS_PROXY and HTTP_PROXY in the environment change nothing while egress_proxy is
    absent: upstream and token endpoint are reached directly."""
    clean_env.setenv("HTTPS_PROXY", tinyproxy.url())
    clean_env.setenv("HTTP_PROXY", tinyproxy.url())
    clean_env.setenv("ALL_PROXY", tinyproxy.url())
    proxy = await make_proxy(_config("", tls_upstream, sandbox))
    status, _, body = await _get(f"{proxy}/api/hello")
    assert status == 200, body
    assert tinyproxy.requests() == []


async def test_a_plain_http_upstream_is_tunnelled_too(
    tinyproxy: TinyProxy,
    upstream: Upstream,
    make_proxy: ProxyFactory,
    clean_env: pytest.MonkeyPatch,
) -> None:
    """An http:// upstream goes through a CONNECT tunnel as well (not absolute-form), and
    its request arrives as on a direct connection: origin-form target, our Host, no
    Proxy-Authorization."""
    proxy = await make_proxy(
        f'[server]\negress_proxy = "{tinyproxy.url()}"\n'
        f'[[routes]]\nprefix = "/api"\nupstream = "{upstream.url}"\n'
    )
    status, _, _ = await _get(f"{proxy}/api/some/path?q=1")
    assert status == 200
    assert tinyproxy.requests() == [f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1"]
    seen = upstream.last
    assert seen.raw_path == "/some/path?q=1"
    assert seen.header("Host") == f"127.0.0.1:{upstream.port}"
    assert seen.header("Proxy-Authorization") is None


async def test_an_unreachable_egress_proxy_is_named(
    tls_upstream: TlsUpstream, make_proxy: ProxyFactory, clean_env: pytest.MonkeyPatch
) -> None:
    """An egress proxy that is not listening gives a 502 whose log line names it (without
    its password), not the upstream alone."""
    port = _free_port()
    proxy = await make_proxy(
        f'[server]\negress_proxy = "http://{USER}:{PASSWORD}@127.0.0.1:{port}"\n'
        f'[[routes]]\nprefix = "/api"\nupstream = "https://127.0.0.1:{tls_upstream.port}"\n'
        f'ca_file = "{tls_upstream.ca_file}"\n'
    )
    with capture_logs() as events:
        status, headers, body = await _get(f"{proxy}/api/hello")
    assert (status, headers["X-Proxy-Error"]) == (502, "upstream_unreachable")
    assert b"through the egress proxy" in body
    [event] = [e for e in events if e["event"] == "upstream_unreachable"]
    assert event["egress_proxy"] == f"http://{USER}:***@127.0.0.1:{port}"
    assert event["egress_status"] is None
    assert PASSWORD not in repr(events)


@pytest.mark.parametrize(
    ("extra", "credentials", "status"),
    [
        ("", None, 407),  # credentials wanted
        ("", f"{USER}:wrong-{PASSWORD}", 401),  # refused (tinyproxy answers 401, not 407)
        ("ConnectPort 1", f"{USER}:{PASSWORD}", 403),  # CONNECT to that port not allowed
    ],
    ids=["407", "401", "403"],
)
async def test_a_refused_tunnel_is_a_502_naming_the_egress_proxy(
    tmp_path: Path,
    tls_upstream: TlsUpstream,
    make_proxy: ProxyFactory,
    clean_env: pytest.MonkeyPatch,
    extra: str,
    credentials: str | None,
    status: int,
) -> None:
    """A proxy that refuses CONNECT gives the client a 502 upstream_unreachable that says
    so, and a log line naming the egress proxy and its status, never its password."""
    refusing = _start_tinyproxy(tmp_path, extra)
    try:
        if credentials is not None:
            LEAK_WATCH.add(credentials.split(":", 1)[1])
        proxy = await make_proxy(
            f'[server]\negress_proxy = "{refusing.url(credentials)}"\n'
            f'[[routes]]\nprefix = "/api"\nupstream = "https://127.0.0.1:{tls_upstream.port}"\n'
            f'ca_file = "{tls_upstream.ca_file}"\n'
        )
        with capture_logs() as events:
            got, headers, body = await _get(f"{proxy}/api/hello")
    finally:
        refusing.process.terminate()
        refusing.process.wait(5)
    assert got == 502
    assert headers["X-Proxy-Error"] == "upstream_unreachable"
    assert f"egress proxy (it answered {status})".encode() in body
    [event] = [e for e in events if e["event"] == "upstream_unreachable"]
    user = f"{USER}:***@" if credentials else ""
    assert event["egress_proxy"] == f"http://{user}127.0.0.1:{refusing.port}"
    assert event["egress_status"] == status
    assert PASSWORD not in repr(events)
    assert refusing.requests() == [f"CONNECT 127.0.0.1:{tls_upstream.port} HTTP/1.1"]


# -- the answer to CONNECT, as it may arrive ----------------------------------------------

OPEN = b"HTTP/1.1 200 Connection established\r\n\r\n"
OPEN_WITH_HEADERS = b"HTTP/1.0 200 OK\r\nProxy-Agent: corp/1.0\r\nContent-Length: 0\r\n\r\n"
REFUSED = (
    b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="c"\r\n'
    b"Content-Length: 5\r\n\r\nnope!"
)
FORBIDDEN = b"HTTP/1.1 403 Forbidden\n\n"  # bare LF line ends, no reason needed
UPSTREAM_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class FakeEgress:
    """A raw-socket CONNECT proxy that writes its answer in two pieces, split at ``split``,
    then (after a 2xx) plays the upstream itself: the split is what is tested here."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.split = 0
        self.connects: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.connects.append(await reader.readuntil(b"\r\n\r\n"))
            for piece in (self.answer[: self.split], self.answer[self.split :]):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.001)  # two reads on the other side, not one
            if self.answer.startswith(b"HTTP/1.1 200") or self.answer.startswith(b"HTTP/1.0 200"):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(UPSTREAM_ANSWER)
                await writer.drain()
                await reader.read()  # until the client closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class _Request:
    method = "GET"
    path = "/x"
    headers: CIMultiDict[str] = CIMultiDict()
    body = None
    length = None


@pytest.mark.parametrize(
    "answer",
    [OPEN, OPEN_WITH_HEADERS, REFUSED, FORBIDDEN],
    ids=["200", "200-headers", "407", "403-lf"],
)
async def test_the_connect_answer_split_at_every_byte(answer: bytes) -> None:
    """Whichever byte the proxy's answer is split at, a 2xx opens the tunnel (with its
    Content-Length ignored) and anything else is an EgressError with the status; the
    CONNECT names the upstream and carries the proxy's credentials."""
    fake = FakeEgress(answer)
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    via = parse_proxy_url(f"http://{USER}:{PASSWORD}@127.0.0.1:{port}")
    try:
        for split in range(1, len(answer)):
            fake.split = split
            pool = Pool("http", "upstream.test", 8080, dialer=via)
            try:
                if answer in (OPEN, OPEN_WITH_HEADERS):
                    response = await pool.send(_Request(), connect_timeout=5, read_timeout=5)
                    async with response:
                        assert response.status == 200
                        assert b"".join([c async for c in response.iter_any()]) == b"ok"
                else:
                    with pytest.raises(EgressError) as caught:
                        await pool.send(_Request(), connect_timeout=5, read_timeout=5)
                    assert caught.value.status == int(answer[9:12])
                    assert PASSWORD not in str(caught.value)
            finally:
                await pool.close()
    finally:
        server.close()
        await server.wait_closed()
    assert len(fake.connects) == len(answer) - 1
    assert fake.connects[0].startswith(
        b"CONNECT upstream.test:8080 HTTP/1.1\r\nHost: upstream.test:8080\r\n"
        b"Proxy-Authorization: Basic "
    )


async def test_bytes_ahead_of_the_tunnel_and_a_silent_proxy_fail() -> None:
    """A proxy that sends bytes after its 200 (before we spoke through the tunnel) is
    refused; one that never answers CONNECT is a connect timeout."""
    fake = FakeEgress(OPEN + b"HTTP/1.1 200 OK\r\n\r\n")
    fake.split = len(fake.answer)
    silent_connections: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent_connections.append(writer)

    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    quiet = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        for srv, error in ((server, EgressError), (quiet, TimeoutError)):
            port = srv.sockets[0].getsockname()[1]
            pool = Pool("http", "upstream.test", 80, dialer=parse_proxy_url(f"127.0.0.1:{port}"))
            with pytest.raises(error):
                await pool.send(_Request(), connect_timeout=0.3, read_timeout=5)
            await pool.close()
    finally:
        for writer in silent_connections:
            writer.close()
        for srv in (server, quiet):
            srv.close()
            await srv.wait_closed()


# -- which hosts are exempt ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "exempt"),
    [
        ("example.com", "example.com", 443, True),
        ("example.com", "api.example.com", 443, True),
        ("example.com", "badexample.com", 443, False),
        (".example.com", "example.com", 443, True),  # curl: a leading dot is ignored
        ("*.example.com", "a.b.example.com", 443, True),
        ("EXAMPLE.com.", "Api.Example.COM", 443, True),
        ("*", "anything.test", 80, True),
        ("", "anything.test", 80, False),
        (" a.test , b.test ", "b.test", 80, True),
        ("10.0.0.0/8", "10.1.2.3", 443, True),
        ("10.0.0.0/8", "11.1.2.3", 443, False),
        ("10.0.0.0/8", "ten.example", 443, False),  # no DNS lookup
        ("127.0.0.1", "127.0.0.1", 8443, True),
        ("::1", "[::1]", 443, True),
        ("fd00::/8", "[fd12::1]", 443, True),
        ("api.test:8443", "api.test", 8443, True),
        ("api.test:8443", "api.test", 443, False),
        ("[::1]:8443", "::1", 443, False),
        ("[::1]:8443", "[::1]", 8443, True),
        ("127.0.0.1:9000", "127.0.0.1", 9000, True),
    ],
)
def test_no_proxy_reads_as_curl_does(no_proxy: str, host: str, port: int, exempt: bool) -> None:
    """NO_PROXY entries: names match themselves and subdomains, IPs and CIDR networks
    match IP literals, ``*`` everything, ``:port`` one port."""
    assert NoProxy(no_proxy).exempts(host, port) is exempt


@pytest.mark.parametrize(
    ("url", "shown", "problem"),
    [
        ("http://u:p%40ss@corp:3128", "http://u:***@corp:3128", None),
        ("corp:3128", "http://corp:3128", None),
        ("http://corp", "http://corp:1080", None),
        ("https://u:secret@corp:3128", None, "must be an http:// proxy URL, got https://"),
        ("socks5://corp:1080", None, "must be an http:// proxy URL, got socks5://"),
        ("http://u:secret@corp:99999", None, "must be an http://host:port URL"),
        # '#' in a password splits the URL: refused, not read as host "u", port 4711.
        ("http://u:4711#secret@corp:3128", None, "must be http://[user:password@]host"),
        ("http://corp:3128/secret", None, "must be http://[user:password@]host"),
    ],
)
def test_proxy_urls_never_show_the_password(
    url: str, shown: str | None, problem: str | None
) -> None:
    """An egress proxy URL is shown with its password as ***; a bad one is refused
    without it."""
    if problem is None:
        proxy = parse_proxy_url(url)
        assert proxy.shown == shown
        assert "p%40ss" not in repr(proxy)
    else:
        with pytest.raises(ValueError, match="^" + re.escape(problem)) as caught:
            parse_proxy_url(url)
        assert "secret" not in str(caught.value)


# -- the setting -----------------------------------------------------------------------------


def test_check_shows_the_egress_without_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: pytest.MonkeyPatch
) -> None:
    """`check` prints where upstreams go: direct without the key (whatever HTTPS_PROXY
    says), the proxy with its password as *** with it, and refuses a variable that holds
    no usable proxy URL, naming it."""
    path = tmp_path / "routes.toml"
    routes = '[[routes]]\nprefix = "/a"\nupstream = "https://vendor.example"\n'
    clean_env.setenv("HTTPS_PROXY", f"http://{USER}:{PASSWORD}@corp.example:3128")
    clean_env.setenv("no_proxy", ".internal")
    outputs = []
    for server in ("", 'egress_proxy = "env"', f'egress_proxy = "http://{USER}:{PASSWORD}@c:1"'):
        path.write_text(f"[server]\n{server}\n{routes}")
        assert main(["check", "--config", str(path)]) == 0
        outputs.append(capsys.readouterr().out.splitlines()[-1])
    assert outputs == [
        "  egress: direct (server.egress_proxy not set: HTTPS_PROXY and the like ignored)",
        "  egress: from the environment: http direct, "
        f"https via http://{USER}:***@corp.example:3128, NO_PROXY '.internal'",
        f"  egress: via http://{USER}:***@c:1",
    ]
    clean_env.setenv("https_proxy", f"https://{USER}:{PASSWORD}@corp.example:3128")
    path.write_text(f'[server]\negress_proxy = "env"\n{routes}')
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "server.egress_proxy: https_proxy: must be an http:// proxy URL, got https://" in err
    assert PASSWORD not in err


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('"socks5://u:hidden@corp:1080"', "must be an http:// proxy URL, got socks5://"),
        ('"http://u:hidden@:3128"', "must name the proxy's host"),
        ("true", "must be a string, got a boolean"),
    ],
)
def test_a_bad_egress_proxy_is_a_config_error_without_its_password(
    value: str, problem: str
) -> None:
    """server.egress_proxy takes "env" or an http:// URL; a problem names the key and
    never shows the password."""
    toml = f'[server]\negress_proxy = {value}\n[[routes]]\nprefix = "/a"\nupstream = "http://x"\n'
    with pytest.raises(ConfigError) as caught:
        config.loads(toml, {})
    assert any(
        p.startswith("server.egress_proxy: ") and problem in p for p in caught.value.problems
    )
    assert "hidden" not in str(caught.value)


async def test_the_log_redactor_learns_the_proxy_password(clean_env: pytest.MonkeyPatch) -> None:
    """The egress proxy's password (and its Basic token) are among the secrets the log
    redactor hides, as the config's other credentials are; a user without a password adds
    no empty string."""
    for user, hidden in ((f"{USER}:{PASSWORD}", [PASSWORD]), (USER, [])):
        toml = (
            f'[server]\negress_proxy = "http://{user}@corp.example:3128"\n'
            '[[routes]]\nprefix = "/a"\nupstream = "https://vendor.example"\n'
        )
        runtime = Runtime(config.loads(toml, {}), Metrics())
        try:
            token = base64.b64encode(f"{user}{'' if hidden else ':'}".encode()).decode()
            assert runtime.secrets() == [token, *hidden]
        finally:
            await runtime.close()
            await runtime.state.close()


async def test_a_reload_that_changes_egress_renews_the_token_session(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """A reload keeps an unchanged auth table's token manager only while its token
    endpoint's egress is unchanged too: the session under it is bound to one proxy."""

    def loaded(server: str) -> config.Config:
        return config.loads(
            f"[server]\n{server}\n"
            '[auth.a]\ntype = "client_credentials"\ntoken_url = "https://idp.example/t"\n'
            'client_id = "id"\nclient_secret = "secret"\n'
            '[[routes]]\nprefix = "/a"\nupstream = "https://vendor.example"\nauth = "a"\n',
            {},
        )

    metrics = Metrics()
    first = Runtime(loaded(""), metrics)
    same = Runtime(loaded('egress_proxy = "env"'), metrics, previous=first)  # no variables
    proxied = Runtime(loaded('egress_proxy = "http://corp:3128"'), metrics, previous=same)
    exempt = 'egress_proxy = "http://corp:3128"\negress_no_proxy = ".example"'
    direct = Runtime(loaded(exempt), metrics, previous=proxied)
    try:
        assert same.tokens["a"] is first.tokens["a"]
        assert proxied.tokens["a"] is not same.tokens["a"]
        assert direct.tokens["a"] is not proxied.tokens["a"]
    finally:
        for runtime in (first, same, proxied, direct):
            await runtime.close()
        await first.state.close()
