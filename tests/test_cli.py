"""The command line as users run it: `python -m proxy check` and `python -m proxy serve`."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import trustme

from proxy import config as config_module
from proxy.app import build_app, start
from proxy.errors import ConfigError

from .conftest import Upstream
from .processes import start_proxy
from .test_config import ROOT, VENDOR_ENV


def run_check(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=30,
        check=False,
    )


def test_check_valid_config_prints_routes_without_secrets() -> None:
    """check exits 0 and prints each prefix -> upstream, never a credential."""
    result = run_check("--config", str(ROOT / "routes.toml"), env=VENDOR_ENV)
    assert result.returncode == 0, result.stderr
    assert "/travtus -> https://api.travtus.com (auth=travtus)" in result.stdout
    assert "/travis -> https://api.travis.test (auth=travis)" in result.stdout
    assert "/travelyzer -> https://places.gotravelyzer.com (auth=travelyzer)" in result.stdout
    for value in VENDOR_ENV.values():
        if "value" in value:
            assert value not in result.stdout + result.stderr


def test_check_shows_the_state_backend_without_its_secrets(tmp_path: Path) -> None:
    """check names the backend and its settings: the Redis URL with its user and password
    blanked, and whether an encryption key is set, never the key."""
    config = tmp_path / "routes.toml"
    route = '[[routes]]\nprefix = "/a"\nupstream = "http://127.0.0.1:9"\n'
    config.write_text(route)
    assert "state: local" in run_check("--config", str(config)).stdout
    config.write_text(
        route + '[state]\nbackend = "redis"\nurl = "rediss://ops:${PW}@redis.internal:6380/1"\n'
        'encryption_key = "${KEY}"\nfallback_share = 4\n'
    )
    result = run_check("--config", str(config), env={"PW": "pw-in-url", "KEY": "key-material"})
    assert result.returncode == 0, result.stderr
    assert "state: redis at rediss://***@redis.internal:6380/1" in result.stdout
    assert "fallback_share 4, encryption_key set" in result.stdout
    assert "pw-in-url" not in result.stdout
    assert "key-material" not in result.stdout
    assert "ops" not in result.stdout


def test_check_invalid_config_exits_2_naming_keys() -> None:
    """check exits 2 and lists every problem with its key."""
    result = run_check("--config", str(ROOT / "routes.toml"), env={})
    assert result.returncode == 2
    assert (
        "routes[/travis].upstream: environment variable TRAVIS_API_URL is not set" in result.stderr
    )
    assert "auth.travtus.client_secret: environment variable TRAVTUS_CLIENT_SECRET" in result.stderr


def test_config_path_from_env_then_cwd(tmp_path: Path) -> None:
    """--config wins, then $PROXY_CONFIG, then ./routes.toml."""
    (tmp_path / "routes.toml").write_text('[[routes]]\nprefix = "/cwd"\nupstream = "http://h"\n')
    other = tmp_path / "other.toml"
    other.write_text('[[routes]]\nprefix = "/env"\nupstream = "http://h"\n')
    from_cwd = run_check(cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert "/cwd -> http://h" in from_cwd.stdout
    from_env = run_check(cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PROXY_CONFIG": str(other)})
    assert "/env -> http://h" in from_env.stdout


async def test_serve_logs_startup_forwards_and_stops_on_sigterm(
    upstream: Upstream, tmp_path: Path
) -> None:
    """serve logs one start-up line (address, routes), forwards, and exits cleanly."""
    config = tmp_path / "routes.toml"
    config.write_text(
        f'[[routes]]\nprefix = "/v"\nupstream = "{upstream.url}/base"\n'
        f'[[routes]]\nprefix = "/w"\nupstream = "{upstream.url}"\nauth = "a"\n'
        '[auth.a]\ntype = "client_credentials"\ntoken_url = "http://127.0.0.1:1/t"\n'
        'client_id = "id"\nclient_secret = "${SECRET}"\n'
    )
    proxy = await start_proxy(config, env={"SECRET": "do-not-print-me"})
    try:
        assert proxy.startup["routes"] == [
            f"/v -> {upstream.url}/base (no auth)",
            f"/w -> {upstream.url} (auth=a)",
        ]
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{proxy.url}/v/x?y=1") as r:
                assert r.status == 200
            assert upstream.last.raw_path == "/base/x?y=1"
            async with client.get(f"{proxy.url}/w/x") as r:
                assert r.status == 503
                assert r.headers["X-Proxy-Error"] == "token_unavailable"
        assert len(upstream.seen) == 1
    finally:
        code = await proxy.stop()
    assert code == 0
    assert any('"proxy_stopped"' in line for line in proxy.lines)
    assert not any("do-not-print-me" in line for line in proxy.lines)


async def test_serve_with_bad_config_exits_2(tmp_path: Path) -> None:
    """serve refuses to start on an invalid config and says why."""
    config = tmp_path / "routes.toml"
    config.write_text('[[routes]]\nprefix = "v"\nupstream = "http://h"\n')
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert b"routes[0].prefix: must start with '/', got 'v'" in err


async def test_sandbox_command_serves_until_sigterm() -> None:
    """`python -m proxy sandbox --port 0` announces its address, serves, and exits cleanly."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "sandbox",
        "--port",
        "0",
        "--token-lifetime",
        "travis=5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 20)
    started = json.loads(line)
    assert started["event"] == "sandbox_started"
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{started['address']}/-/sandbox/health") as r:
                assert r.status == 200
            async with client.get(f"{started['address']}/-/sandbox/control") as r:
                assert (await r.json())["token_lifetime"]["travis"] == 5
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0


def _run_serve(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("command", ["check", "serve"])
def test_utf16_config_file_exits_2_with_one_line_saying_so(tmp_path: Path, command: str) -> None:
    """check and serve refuse a UTF-16 file (as Notepad saves it) with exit 2 and one line, no
    traceback."""
    config = tmp_path / "routes.toml"
    config.write_bytes('[[routes]]\nprefix = "/a"\nupstream = "http://h"\n'.encode("utf-16"))
    result = run_check("--config", str(config)) if command == "check" else _run_serve(config)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"config file {str(config)!r} is UTF-16" in result.stderr
    assert "save it as UTF-8" in result.stderr


async def test_sighup_with_a_utf16_file_logs_the_problem_and_keeps_serving(
    upstream: Upstream, tmp_path: Path
) -> None:
    """A reload of a file saved as UTF-16 logs config_reload_failed and keeps the old config."""
    config = tmp_path / "routes.toml"
    text = f'[[routes]]\nprefix = "/a"\nupstream = "{upstream.url}"\n'
    config.write_text(text)
    proxy = await start_proxy(config)
    try:
        config.write_bytes(text.replace("/a", "/b").encode("utf-16"))
        proxy.process.send_signal(signal.SIGHUP)
        assert proxy.process.stdout is not None
        async with asyncio.timeout(5):
            while '"config_reload_failed"' not in proxy.lines[-1]:
                proxy.lines.append((await proxy.process.stdout.readline()).decode().rstrip())
        failed = json.loads(proxy.lines[-1])
        assert failed["problems"] == [
            f'config file {str(config)!r} is UTF-16 (Notepad\'s "Unicode"): save it as UTF-8'
        ]
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{proxy.url}/-/health") as r:
                assert r.status == 200
            async with client.get(f"{proxy.url}/a/x") as r:
                assert r.status == 200
    finally:
        code = await proxy.stop()
    assert code == 0
    assert not any("Exception in callback" in line for line in proxy.lines)


@pytest.mark.parametrize("command", ["check", "serve"])
def test_ca_file_that_is_not_pem_exits_2_naming_the_key(tmp_path: Path, command: str) -> None:
    """check and serve exit 2 naming routes[PREFIX].ca_file when the file is not PEM; serve never
    calls it "cannot listen"."""
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    config = tmp_path / "routes.toml"
    config.write_text('[[routes]]\nprefix = "/a"\nupstream = "https://h"\nca_file = "ca.pem"\n')
    result = run_check("--config", str(config)) if command == "check" else _run_serve(config)
    assert result.returncode == 2
    assert "routes[/a].ca_file: not a PEM file of CA certificates: 'ca.pem'" in result.stderr
    assert "cannot listen" not in result.stderr


async def test_a_ca_file_spoiled_after_loading_is_a_config_error_not_a_listen_failure(
    tmp_path: Path,
) -> None:
    """start() reports a ca_file that stopped being PEM after loading as a ConfigError naming
    its key, never as an OSError that serve would call "cannot listen"."""
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    (tmp_path / "routes.toml").write_text(
        '[[routes]]\nprefix = "/a"\nupstream = "https://h"\nca_file = "ca.pem"\n'
        '[[routes]]\nprefix = "/t"\nupstream = "https://h"\nauth = "t"\n'
        '[auth.t]\ntype = "client_credentials"\ntoken_url = "https://h/t"\nclient_id = "i"\n'
        'client_secret = "s"\nca_file = "ca.pem"\n'
    )
    loaded = config_module.load(tmp_path / "routes.toml", {})
    ca_file.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as info:
        await start(build_app(loaded, access_log=None), "127.0.0.1", 0)
    assert info.value.problems == [
        f"routes[/a].ca_file: not a PEM file of CA certificates: {str(ca_file)!r}",
        f"auth.t.ca_file: not a PEM file of CA certificates: {str(ca_file)!r}",
    ]


def test_serve_on_a_port_in_use_exits_1_saying_it_cannot_listen(tmp_path: Path) -> None:
    """A port another socket holds is the one failure serve reports as "cannot listen"."""
    config = tmp_path / "routes.toml"
    config.write_text('[[routes]]\nprefix = "/a"\nupstream = "http://h"\n')
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = _run_serve(config, "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.startswith(f"cannot listen on 127.0.0.1:{port}: ")
    assert "address already in use" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_check_refuses_a_server_host_with_a_port(tmp_path: Path) -> None:
    """check exits 2 naming server.host when it holds a port, which serve could not listen on."""
    config = tmp_path / "routes.toml"
    config.write_text('[server]\nhost = "127.0.0.1:18181"\n')
    result = run_check("--config", str(config))
    assert result.returncode == 2
    assert "server.host: must be an IP address" in result.stderr
    assert "put the port in server.port" in result.stderr


@pytest.mark.parametrize(
    ("command", "host", "hint"),
    [
        ("serve", "127.0.0.1:18181", " (it looks like host:port: put the port in --port)"),
        ("serve", "", ""),
        ("demo", "[::1]", " (write it without brackets: '::1')"),
        ("sandbox", "proxy_1", ""),
    ],
)
def test_host_option_must_be_an_address_or_host_name(
    tmp_path: Path, command: str, host: str, hint: str
) -> None:
    """--host that is not an IP address or host name is refused with exit 2 before anything
    starts."""
    config = tmp_path / "routes.toml"
    config.write_text('[[routes]]\nprefix = "/a"\nupstream = "http://h"\n')
    extra = () if command == "sandbox" else ("--config", str(config))
    result = subprocess.run(
        [sys.executable, "-m", "proxy", command, *extra, "--host", host],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert (
        f"argument --host: must be an IP address (IPv6 without brackets) or a host name, "
        f"got {host!r}{hint}"
    ) in result.stderr


PORT_RANGE = "must be a port number from 0 to 65535, got "
AT_LEAST_1 = "must be a whole number of at least 1, got "


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        ("serve", ("--port", "99999"), f"argument --port: {PORT_RANGE}'99999'"),
        ("serve", ("--port", "-1"), f"argument --port: {PORT_RANGE}'-1'"),
        ("serve", ("--port", "http"), f"argument --port: {PORT_RANGE}'http'"),
        ("serve", ("--port", "0", "--workers", "-1"), f"argument --workers: {AT_LEAST_1}'-1'"),
        ("serve", ("--port", "0", "--workers", "0"), f"argument --workers: {AT_LEAST_1}'0'"),
        ("serve", ("--port", "0", "--workers", "1.5"), f"argument --workers: {AT_LEAST_1}'1.5'"),
        ("demo", ("--port", "99999"), f"argument --port: {PORT_RANGE}'99999'"),
        ("demo", ("--sandbox-port", "70000"), f"argument --sandbox-port: {PORT_RANGE}'70000'"),
        ("sandbox", ("--port", "65536"), f"argument --port: {PORT_RANGE}'65536'"),
    ],
)
def test_port_and_workers_options_are_range_checked(
    tmp_path: Path, command: str, args: tuple[str, ...], expected: str
) -> None:
    """--port outside 0-65535 and --workers below 1 are refused with exit 2 before anything
    starts."""
    config = tmp_path / "routes.toml"
    config.write_text('[[routes]]\nprefix = "/a"\nupstream = "http://h"\n')
    extra = () if command == "sandbox" else ("--config", str(config))
    result = subprocess.run(
        [sys.executable, "-m", "proxy", command, *extra, *args],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert result.returncode == 2
    assert expected in result.stderr
