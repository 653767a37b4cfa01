"""HTTPS on the listener (``[server] tls``): served by a real `python -m proxy serve`,
reached by curl and by aiohttp, the certificate rotated by SIGHUP, refused at load when its
files cannot serve."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme

from proxy import config
from proxy.config.tls import listener_context
from proxy.errors import ConfigError

from .conftest import LEAK_WATCH, Upstream
from .processes import ProxyProcess, start_proxy
from .tlsfiles import Pair, encrypted_key, write_ca, write_pair

KEY_PASSWORD = "listener-key-password-0f3a"
LEAK_WATCH.add(KEY_PASSWORD)


@dataclass
class Listener:
    """A CA, the proxy's certificate files (cert A's by default) and a routes.toml using them."""

    ca: trustme.CA
    ca_file: Path
    served: Pair
    config: Path

    def install(self, issued: trustme.LeafCert) -> None:
        """Put ``issued`` where the config points: a rotation, as cert-manager does one."""
        fresh = write_pair(issued, self.served.cert.parent / "next", "server")
        fresh.cert.replace(self.served.cert)
        fresh.key.replace(self.served.key)


@pytest.fixture
def listener(tmp_path: Path, upstream: Upstream) -> Listener:
    ca = trustme.CA()
    served = write_pair(ca.issue_cert("127.0.0.1", "localhost"), tmp_path / "tls", "server")
    routes = tmp_path / "routes.toml"
    routes.write_text(
        f'[server]\ntls = {{ cert_file = "tls/server.crt", key_file = "tls/server.key" }}\n'
        f'[[routes]]\nprefix = "/api"\nupstream = "{upstream.url}"\n'
    )
    return Listener(ca, write_ca(ca, tmp_path / "ca.pem"), served, routes)


@pytest.fixture
async def proxy(listener: Listener) -> AsyncIterator[ProxyProcess]:
    started = await start_proxy(listener.config)
    yield started
    assert await started.stop() == 0


async def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, ["curl", "-sS", "--max-time", "5", *args], capture_output=True, text=True
    )


async def _serial(url: str, ca_file: Path) -> int:
    """The serial number of the certificate a new connection to ``url`` is served."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca_file))
    _, writer = await asyncio.open_connection(host, int(port), ssl=context)
    try:
        peer = writer.get_extra_info("ssl_object").getpeercert()
        return int(peer["serialNumber"], 16)
    finally:
        writer.close()


def _serial_of(pair: Pair) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(pair.cert.read_bytes()).serial_number


async def _next_event(proxy: ProxyProcess, *names: str) -> dict[str, object]:
    assert proxy.process.stdout is not None
    async with asyncio.timeout(5):
        while True:
            line = (await proxy.process.stdout.readline()).decode().rstrip()
            proxy.lines.append(line)
            if any(f'"{name}"' in line for name in names):
                event: dict[str, object] = json.loads(line)
                return event


async def test_curl_and_aiohttp_reach_a_route_and_health_over_https(
    listener: Listener, proxy: ProxyProcess, upstream: Upstream
) -> None:
    """The proxy announces an https:// address; curl (--cacert) and aiohttp, trusting the CA,
    get /-/health and a route's answer through it."""
    assert proxy.url.startswith("https://127.0.0.1:")
    health = await _curl("--cacert", str(listener.ca_file), f"{proxy.url}/-/health")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "ok"}
    routed = await _curl("--cacert", str(listener.ca_file), f"{proxy.url}/api/hello?x=1")
    assert routed.returncode == 0, routed.stderr
    assert upstream.last.raw_path == "/hello?x=1"
    context = ssl.create_default_context(cafile=str(listener.ca_file))
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{proxy.url}/api/hello", ssl=context) as r:
            assert r.status == 200
        async with client.get(f"{proxy.url}/-/health", ssl=context) as r:
            assert r.status == 200
        assert r.connection is None  # released: the same connection served both


async def test_an_untrusted_client_and_plain_http_are_refused_and_serving_goes_on(
    listener: Listener, proxy: ProxyProcess
) -> None:
    """curl without the CA refuses the certificate; plain HTTP to the TLS port gets no
    answer (curl: empty reply), no traceback; HTTPS still works after both."""
    untrusted = await _curl(f"{proxy.url}/-/health")
    assert untrusted.returncode == 60, untrusted.stderr  # peer certificate cannot be verified
    plain = await _curl(proxy.url.replace("https://", "http://") + "/-/health")
    assert plain.returncode == 52, plain.stderr  # empty reply from server
    again = await _curl("--cacert", str(listener.ca_file), f"{proxy.url}/-/health")
    assert again.returncode == 0, again.stderr
    assert not any("Traceback" in line for line in proxy.lines)


async def test_sighup_serves_a_rotated_certificate_and_keeps_it_when_the_next_is_bad(
    listener: Listener, proxy: ProxyProcess
) -> None:
    """Cert A is served; its files replaced by cert B's and SIGHUP: new connections get B.
    Then a key that is not B's and SIGHUP: config_reload_failed names server.tls.key_file
    and B is still served."""
    first = await _serial(proxy.url, listener.ca_file)
    assert first == _serial_of(listener.served)
    listener.install(listener.ca.issue_cert("127.0.0.1"))
    second = _serial_of(listener.served)
    proxy.process.send_signal(signal.SIGHUP)
    await _next_event(proxy, "config_reloaded")
    assert await _serial(proxy.url, listener.ca_file) == second != first

    stray = write_pair(listener.ca.issue_cert("127.0.0.1"), listener.ca_file.parent, "stray")
    stray.key.replace(listener.served.key)
    proxy.process.send_signal(signal.SIGHUP)
    failed = await _next_event(proxy, "config_reloaded", "config_reload_failed")
    assert failed["event"] == "config_reload_failed"
    assert failed["problems"] == [
        "server.tls.key_file: is not the key of the certificate in cert_file"
    ]
    assert await _serial(proxy.url, listener.ca_file) == second


async def test_workers_each_serve_https_on_the_shared_port(listener: Listener) -> None:
    """serve --workers 2: every worker builds its TLS context; new connections, spread over
    both by the kernel (SO_REUSEPORT), all complete a verified handshake."""
    group = await start_proxy(listener.config, "--workers", "2")
    try:
        url = group.url
        assert url.startswith("https://")  # the group's proxy_started line says so
        context = ssl.create_default_context(cafile=str(listener.ca_file))
        connector = aiohttp.TCPConnector(force_close=True, ssl=context)
        async with aiohttp.ClientSession(connector=connector) as client:
            for _ in range(24):
                async with client.get(f"{url}/api/spread") as r:
                    assert r.status == 200
    finally:
        assert await group.stop() == 0
    served = [json.loads(line) for line in group.lines if '"/api/spread"' in line]
    assert len(served) == 24
    # 24 connections all hashed to one worker: about one run in 10 million.
    assert {line["worker"] for line in served} == {0, 1}


def _listener_config(tmp_path: Path, **tls: str) -> str:
    pairs = ", ".join(f'{k} = "{v}"' for k, v in tls.items())
    return f'[server]\ntls = {{ {pairs} }}\n[[routes]]\nprefix = "/a"\nupstream = "http://x"\n'


@pytest.fixture
def issued(tmp_path: Path) -> tuple[trustme.CA, Pair]:
    ca = trustme.CA()
    return ca, write_pair(ca.issue_cert("127.0.0.1"), tmp_path, "server")


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("missing cert", "server.tls.cert_file: file not found: 'absent.crt'"),
        ("missing key", "server.tls.key_file: is required"),
        ("not a certificate", "server.tls.cert_file: not a PEM file of certificates"),
        ("not a key", "server.tls.key_file: not a PEM private key"),
        ("another key", "server.tls.key_file: is not the key of the certificate in cert_file"),
        ("encrypted, no password", "server.tls.key_file: is encrypted: set key_password"),
        ("wrong password", "server.tls.key_password: does not decrypt key_file"),
    ],
)
def test_unusable_listener_files_are_a_config_error_naming_the_key(
    tmp_path: Path, issued: tuple[trustme.CA, Pair], case: str, problem: str
) -> None:
    """Each way the listener's files can fail is one problem naming its server.tls key."""
    ca, pair = issued
    tls = {"cert_file": str(pair.cert), "key_file": str(pair.key)}
    if case == "missing cert":
        tls["cert_file"] = "absent.crt"
    elif case == "missing key":
        del tls["key_file"]
    elif case == "not a certificate":
        tls["cert_file"] = str(pair.key)
    elif case == "not a key":
        tls["key_file"] = str(pair.cert)
    elif case == "another key":
        tls["key_file"] = str(write_pair(ca.issue_cert("127.0.0.1"), tmp_path, "other").key)
    else:
        tls["key_file"] = str(encrypted_key(pair.key, tmp_path / "locked.key", KEY_PASSWORD))
        if case == "wrong password":
            tls["key_password"] = "not-it"
    with pytest.raises(ConfigError) as raised:
        config.loads(_listener_config(tmp_path, **tls), {}, base_dir=tmp_path)
    assert [p.split(" (or")[0] for p in raised.value.problems] == [problem]


def test_an_encrypted_key_loads_with_its_password_from_the_environment(
    tmp_path: Path, issued: tuple[trustme.CA, Pair]
) -> None:
    """key_password (${VAR} like any secret) opens an encrypted key; no repr shows it."""
    _, pair = issued
    text = _listener_config(
        tmp_path,
        cert_file=str(pair.cert),
        key_file=str(encrypted_key(pair.key, tmp_path / "locked.key", KEY_PASSWORD)),
        key_password="${TLS_KEY_PASSWORD}",
    )
    loaded = config.loads(text, {"TLS_KEY_PASSWORD": KEY_PASSWORD}, base_dir=tmp_path)
    assert loaded.server.tls is not None
    assert KEY_PASSWORD not in repr(loaded)


def test_check_names_the_listener_key_that_cannot_serve(
    tmp_path: Path, issued: tuple[trustme.CA, Pair]
) -> None:
    """`proxy check` exits 2 and names server.tls.key_file when the key is not the cert's."""
    ca, pair = issued
    other = write_pair(ca.issue_cert("127.0.0.1"), tmp_path, "other")
    routes = tmp_path / "routes.toml"
    routes.write_text(_listener_config(tmp_path, cert_file="server.crt", key_file=str(other.key)))
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(routes)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "server.tls.key_file: is not the key of the certificate in cert_file" in result.stderr
    assert pair.cert.exists()


@pytest.mark.parametrize("mode", ["required", "optional"])
async def test_client_certificates_are_checked_against_ca_file(
    tmp_path: Path, upstream: Upstream, mode: str
) -> None:
    """client_auth = "required": only a client presenting a certificate from ca_file's CA
    gets an answer; "optional": one presenting none does too, one presenting a stranger's
    is refused either way."""
    ca, client_ca = trustme.CA(), trustme.CA()
    served = write_pair(ca.issue_cert("127.0.0.1"), tmp_path, "server")
    member = write_pair(client_ca.issue_cert("member"), tmp_path, "member")
    stranger = write_pair(trustme.CA().issue_cert("stranger"), tmp_path, "stranger")
    routes = tmp_path / "routes.toml"
    routes.write_text(
        _listener_config(
            tmp_path,
            cert_file=str(served.cert),
            key_file=str(served.key),
            ca_file=str(write_ca(client_ca, tmp_path / "clients.pem")),
            client_auth=mode,
        ).replace("http://x", upstream.url)
    )
    proxy = await start_proxy(routes)
    try:
        trust = ("--cacert", str(write_ca(ca, tmp_path / "ca.pem")))
        url = f"{proxy.url}/a/who"
        shown = await _curl(*trust, "--cert", str(member.cert), "--key", str(member.key), url)
        assert shown.returncode == 0, shown.stderr
        bare = await _curl(*trust, url)
        assert (bare.returncode == 0) == (mode == "optional"), bare.stderr
        foreign = await _curl(*trust, "--cert", str(stranger.cert), "--key", str(stranger.key), url)
        assert foreign.returncode != 0
        assert foreign.stdout == ""
    finally:
        assert await proxy.stop() == 0
    assert len([s for s in upstream.seen if s.raw_path == "/who"]) == 1 + (mode == "optional")


def test_client_auth_needs_ca_file_and_changes_only_on_restart(
    tmp_path: Path, issued: tuple[trustme.CA, Pair]
) -> None:
    """client_auth without ca_file is a problem; ca_file alone means "required"; a reload
    that would change client_auth is refused, naming the key."""
    ca, pair = issued
    files = {"cert_file": str(pair.cert), "key_file": str(pair.key)}
    with pytest.raises(ConfigError) as raised:
        config.loads(_listener_config(tmp_path, **files, client_auth="optional"), {})
    assert raised.value.problems == [
        "server.tls.client_auth: needs ca_file (the CAs client certificates are checked against)"
    ]
    ca_file = str(write_ca(ca, tmp_path / "ca.pem"))
    strict = config.loads(_listener_config(tmp_path, **files, ca_file=ca_file), {}).server.tls
    assert strict is not None
    assert strict.client_auth == "required"
    plain = config.loads(_listener_config(tmp_path, **files), {}).server.tls
    assert plain is not None
    listener = listener_context(strict)
    assert listener is not None
    with pytest.raises(ConfigError) as refused:
        listener.update(plain)
    assert refused.value.problems == [
        "server.tls.client_auth: changes only on restart (now required)"
    ]


async def test_a_client_stalling_in_the_handshake_is_cut_after_header_timeout(
    tmp_path: Path, issued: tuple[trustme.CA, Pair]
) -> None:
    """A connection that never starts its TLS handshake is closed after
    server.header_timeout, not asyncio's default minute."""
    _, pair = issued
    routes = tmp_path / "routes.toml"
    text = _listener_config(tmp_path, cert_file=str(pair.cert), key_file=str(pair.key))
    routes.write_text(text.replace("[server]\n", "[server]\nheader_timeout = 0.5\n"))
    proxy = await start_proxy(routes)
    try:
        host, port = proxy.url.removeprefix("https://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        async with asyncio.timeout(10):  # the default handshake timeout is 60 s
            assert await reader.read() == b""
        writer.close()
    finally:
        assert await proxy.stop() == 0
