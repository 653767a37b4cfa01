"""The process from start to exit, as an operator drives it: a taken port, the drain on
SIGTERM, reloads of the listener's settings, the open-files limit and systemd's readiness
socket, each with a real ``python -m proxy`` subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from proxy.sandbox import SandboxSettings, build_sandbox_app

from .conftest import Upstream
from .processes import ProxyProcess, start_proxy

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "demo" / "routes.toml"


@pytest.fixture
def taken() -> Iterator[int]:
    """A port of 127.0.0.1 another program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _routes(upstream: Upstream, server: str = "") -> str:
    return f'[server]\n{server}\n[[routes]]\nprefix = "/u"\nupstream = "{upstream.url}"\n'


async def _next_event(proxy: ProxyProcess, *events: str, timeout: float = 10) -> dict[str, Any]:
    """Read the proxy's output up to the next line logging one of ``events``."""
    assert proxy.process.stdout is not None
    async with asyncio.timeout(timeout):
        while True:
            raw = await proxy.process.stdout.readline()
            assert raw, "the proxy exited:\n" + "\n".join(proxy.lines)
            line = raw.decode().rstrip("\n")
            proxy.lines.append(line)
            if line.startswith("{") and json.loads(line).get("event") in events:
                event: dict[str, Any] = json.loads(line)
                return event


async def _ready(client: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with client.get(f"{url}/-/ready") as r:
        return r.status, await r.json()


async def _refuses(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


# -- a taken port ---------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_on_a_taken_port_says_so_in_one_line_and_spends_no_token(
    aiohttp_server: AiohttpServer, taken: int, workers: int
) -> None:
    """serve on a port in use exits 1 with one line naming the port and how to choose
    another, and has asked the vendors for no token (Travelyzer allows 100 a minute: a
    restart loop must not eat them)."""
    sandbox = await aiohttp_server(build_sandbox_app(SandboxSettings()), host="127.0.0.1")
    sandbox_url = f"http://127.0.0.1:{sandbox.port}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(DEMO_CONFIG),
        "--port",
        str(taken),
        "--workers",
        str(workers),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SANDBOX_URL": sandbox_url},
    )
    _, err = await asyncio.wait_for(process.communicate(), 20)
    await asyncio.sleep(0.3)  # a token request already on its way would land by now
    async with aiohttp.ClientSession() as client, client.get(f"{sandbox_url}/-/sandbox/log") as r:
        entries = (await r.json())["entries"]
    assert process.returncode == 1
    assert err.decode().splitlines() == [
        f"cannot listen on 127.0.0.1:{taken}: Address already in use; "
        "choose another with --port (or [server] port in the config)"
    ]
    assert [e for e in entries if e["kind"] == "token"] == []


@pytest.mark.parametrize("which", ["PORT", "SANDBOX_PORT"])
async def test_make_demo_on_a_taken_port_says_so_in_one_line(taken: int, which: str) -> None:
    """make demo with either of its ports taken says which, and how to pick others, in
    one line (and make's own failure line), with no traceback."""
    ports = {"PORT": "0", "SANDBOX_PORT": "0", which: str(taken)}
    venv = sys.prefix  # the environment running these tests is the one make would build
    process = await asyncio.create_subprocess_exec(
        "make",
        "-s",
        "-C",
        str(ROOT),
        "-o",
        f"{venv}/.installed",  # never (re)build it here: it exists, and the network does not
        "demo",
        f"VENV={venv}",
        *(f"{name}={value}" for name, value in ports.items()),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 30)
    lines = [line for line in err.decode().splitlines() if not line.startswith("make")]
    assert process.returncode != 0
    assert lines == [
        f"cannot listen on 127.0.0.1:{taken}: Address already in use; choose free ports: "
        "make demo PORT=8081 SANDBOX_PORT=9001 "
        "(or python -m proxy demo --port 8081 --sandbox-port 9001)"
    ]


# -- the drain ------------------------------------------------------------------------


async def test_sigterm_drains_then_closes_the_listener_and_lets_requests_finish(
    upstream: Upstream, tmp_path: Path
) -> None:
    """On SIGTERM /-/ready turns 503 (draining) while requests are still served for
    drain_delay; then the port refuses connections, a request in flight still completes
    within shutdown_grace, and the process exits 0."""
    config = tmp_path / "routes.toml"
    config.write_text(_routes(upstream, "drain_delay = 2\nshutdown_grace = 6"))
    proxy = await start_proxy(config)
    try:
        async with aiohttp.ClientSession() as client:
            slow = asyncio.create_task(_fetch(client, f"{proxy.url}/u/slow?s=5"))
            async with asyncio.timeout(5):
                while not any(s.raw_path.startswith("/slow") for s in upstream.seen):
                    await asyncio.sleep(0.02)
            proxy.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            async with asyncio.timeout(5):
                while (answer := await _ready(client, proxy.url))[0] != 503:
                    await asyncio.sleep(0.02)
            async with aiohttp.ClientSession() as fresh, fresh.get(f"{proxy.url}/u/new") as r:
                during = r.status
            async with asyncio.timeout(10):
                while not await _refuses(proxy.url):
                    await asyncio.sleep(0.05)
            closed = time.monotonic()
            status, body = await asyncio.wait_for(slow, 10)
            finished = time.monotonic()
    finally:
        code = await proxy.stop()
    assert answer == (503, {"status": "draining", "reason": "the proxy is shutting down"})
    assert during == 200
    assert closed - signalled >= 2
    assert (status, body) == (200, "late")
    assert finished > closed
    assert code == 0
    events = [json.loads(line)["event"] for line in proxy.lines if line.startswith("{")]
    lifecycle = ("proxy_draining", "proxy_stopping", "proxy_stopped")
    assert [e for e in events if e in lifecycle] == list(lifecycle)


async def _fetch(client: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with client.get(url) as r:
        return r.status, await r.text()


async def test_a_second_sigterm_skips_the_rest_of_the_drain(
    upstream: Upstream, tmp_path: Path
) -> None:
    """A second SIGTERM during a long drain stops the proxy at once (exit 0)."""
    config = tmp_path / "routes.toml"
    config.write_text(_routes(upstream, "drain_delay = 60"))
    proxy = await start_proxy(config)
    proxy.process.send_signal(signal.SIGTERM)
    await _next_event(proxy, "proxy_draining")
    proxy.process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(proxy.process.wait(), 10)
    await proxy.stop()
    assert code == 0


async def test_every_worker_of_a_group_drains(upstream: Upstream, tmp_path: Path) -> None:
    """serve --workers 2: SIGTERM to the supervisor reaches every worker, each answers
    /-/ready with 503 while it drains, and the group exits 0 after."""
    config = tmp_path / "routes.toml"
    config.write_text(_routes(upstream, "drain_delay = 2"))
    proxy = await start_proxy(config, "--workers", "2")
    try:
        proxy.process.send_signal(signal.SIGTERM)
        async with aiohttp.ClientSession() as client, asyncio.timeout(5):
            while (answer := await _ready(client, proxy.url))[0] != 503:
                await asyncio.sleep(0.02)
        code = await asyncio.wait_for(proxy.process.wait(), 15)
    finally:
        await proxy.stop()
    assert answer[1]["status"] == "draining"
    assert code == 0
    draining = [json.loads(line) for line in proxy.lines if '"proxy_draining"' in line]
    assert sorted(line["worker"] for line in draining) == [0, 1]


# -- reloads --------------------------------------------------------------------------


async def test_sighup_after_the_port_changes_back_keeps_nothing(
    upstream: Upstream, tmp_path: Path
) -> None:
    """A reload naming another port says the listener keeps its port; one that names the
    listener's port again says nothing of the kind."""
    port, other = _free_port(), _free_port()
    config = tmp_path / "routes.toml"
    config.write_text(_routes(upstream, f'host = "127.0.0.1"\nport = {port}'))
    proxy = await _start_from_file(config)
    try:
        config.write_text(_routes(upstream, f'host = "127.0.0.1"\nport = {other}'))
        proxy.process.send_signal(signal.SIGHUP)
        first = await _next_event(proxy, "config_reload_keeps_listener", "config_reloaded")
        await _next_event(proxy, "config_reloaded")
        config.write_text(_routes(upstream, f'host = "127.0.0.1"\nport = {port}'))
        proxy.process.send_signal(signal.SIGHUP)
        second = await _next_event(proxy, "config_reload_keeps_listener", "config_reloaded")
    finally:
        await proxy.stop()
    assert (first["event"], first["keys"]) == ("config_reload_keeps_listener", ["port"])
    assert second["event"] == "config_reloaded"


async def _start_from_file(config: Path, *extra: str, **env: str) -> ProxyProcess:
    """serve with the listen address the file gives (start_proxy overrides it)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(config),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **env},
    )
    proxy = ProxyProcess(process, "", {})
    started = await _next_event(proxy, "proxy_started", timeout=20)
    proxy.startup, proxy.url = started, started["addresses"][0]
    return proxy


# -- open files -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "limit", "serving"),
    [
        # The defaults (10,000 connections, 4,096 in flight) need 14,224 descriptors.
        ("", 15000, None),
        # 1,000 connections of which 100 at most have an upstream socket: 772 fit in 1,000.
        ("max_connections = 1000\nmax_in_flight = 100", 1000, 772),
    ],
)
async def test_fd_limit_low_only_when_the_limit_binds(
    upstream: Upstream, tmp_path: Path, server: str, limit: int, serving: int | None
) -> None:
    """The open-files limit binds only when it cannot hold a socket per connection plus
    one per request in flight (max_in_flight) plus the reserve: then, and only then,
    fd_limit_low says how many connections are served."""
    config = tmp_path / "routes.toml"
    config.write_text(_routes(upstream, server))
    proxy = await start_proxy(config, limits={resource.RLIMIT_NOFILE: (limit, limit)})
    await proxy.stop()
    warnings = [json.loads(line) for line in proxy.lines if '"fd_limit_low"' in line]
    assert [w["serving"] for w in warnings] == ([] if serving is None else [serving])


# -- systemd's readiness socket -------------------------------------------------------


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> Iterator[tuple[str, socket.socket]]:
    """A bound Unix datagram socket, as systemd listens for sd_notify, and its
    NOTIFY_SOCKET value (a path, or "@name" in the abstract namespace)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        if request.param == "path":
            name = address = os.path.join(directory, "notify")
        else:
            name = f"@proxy-test-{uuid.uuid4().hex}"
            address = "\0" + name[1:]
        sock.bind(address)
        with sock:
            yield name, sock


async def _notified(sock: socket.socket, timeout: float = 10) -> dict[str, str]:
    data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), timeout)
    return dict(line.split("=", 1) for line in data.decode().splitlines())


async def test_systemd_hears_ready_once_the_port_serves_then_reloading_and_stopping(
    upstream: Upstream, tmp_path: Path, notify_socket: tuple[str, socket.socket]
) -> None:
    """With NOTIFY_SOCKET set, READY=1 comes when the port already accepts; a SIGHUP
    sends RELOADING=1 then READY=1, SIGTERM sends STOPPING=1."""
    name, sock = notify_socket
    port = _free_port()
    config = tmp_path / "routes.toml"
    config.write_text(_routes(upstream, "drain_delay = 0"))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "NOTIFY_SOCKET": name},
    )
    try:
        ready = await _notified(sock, 20)
        accepted = not await _refuses(f"http://127.0.0.1:{port}")
        process.send_signal(signal.SIGHUP)
        reloading = await _notified(sock)
        reloaded = await _notified(sock)
        process.send_signal(signal.SIGTERM)
        stopping = await _notified(sock)
        code = await asyncio.wait_for(process.wait(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert (ready["READY"], ready["MAINPID"]) == ("1", str(process.pid))
    assert accepted
    assert reloading["RELOADING"] == "1"
    assert int(reloading["MONOTONIC_USEC"]) > 0
    assert reloaded["READY"] == "1"
    assert stopping["STOPPING"] == "1"
    assert code == 0


async def test_a_group_tells_systemd_once_all_its_workers_serve(
    upstream: Upstream, tmp_path: Path, notify_socket: tuple[str, socket.socket]
) -> None:
    """serve --workers 2: the supervisor alone speaks to systemd, READY=1 once and
    STOPPING=1 once; the workers stay silent."""
    name, sock = notify_socket
    config = tmp_path / "routes.toml"
    config.write_text(_routes(upstream, "drain_delay = 0"))
    proxy = await start_proxy(config, "--workers", "2", env={"NOTIFY_SOCKET": name})
    ready = await _notified(sock)
    proxy.process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(proxy.process.wait(), 15)
    await proxy.stop()
    rest = []
    while True:
        try:
            rest.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    assert (ready["READY"], ready["MAINPID"]) == ("1", str(proxy.pid))
    assert [message.splitlines()[0] for message in rest] == ["STOPPING=1"]
    assert code == 0
