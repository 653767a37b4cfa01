"""``serve --workers N``: N processes sharing one port through SO_REUSEPORT.

Each worker has its own token caches and rate limiters (with ``[state] backend =
"local"``, the only backend so far), so every limit is divided by N (LocalState.share):
the workers together still never exceed what the upstream allows. The parent only
supervises: it starts the workers, waits until each is listening, passes
SIGTERM/SIGINT/SIGHUP on, and exits when they have.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence

import structlog

from .errors import ListenError

log = structlog.get_logger("proxy.workers")

READY_FD_ENV = "PROXY_READY_FD"
STARTUP_TIMEOUT = 30.0


def announce_ready(addresses: list[str]) -> None:
    """In a worker: tell the parent we listen (no-op when not started by a parent)."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    with os.fdopen(int(fd), "w") as pipe:
        pipe.write(json.dumps({"pid": os.getpid(), "addresses": addresses}) + "\n")


def _reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (not listen) a SO_REUSEPORT socket: it fixes the port for the workers (port 0
    picks one) without taking any of their connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(host, port, exc.strerror or str(exc)) from exc
    return sock, sock.getsockname()[1]


async def supervise(argv: Sequence[str], host: str, port: int, n: int, routes: list[str]) -> int:
    """Run n workers of ``python -m proxy serve`` (argv without host/port/workers)."""
    reserved, port = _reserve_port(host, port)
    processes: list[asyncio.subprocess.Process] = []
    readers: list[asyncio.StreamReader] = []
    loop = asyncio.get_running_loop()
    try:
        for index in range(n):
            read_fd, write_fd = os.pipe()
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "proxy",
                *argv,
                "--host",
                host,
                "--port",
                str(port),
                "--worker-of",
                str(n),
                env={**os.environ, READY_FD_ENV: str(write_fd)},
                pass_fds=(write_fd,),
            )
            os.close(write_fd)
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(
                functools.partial(asyncio.StreamReaderProtocol, reader), os.fdopen(read_fd, "rb")
            )
            processes.append(process)
            readers.append(reader)
            log.debug("worker_spawned", index=index, pid=process.pid)
        pids = []
        async with asyncio.timeout(STARTUP_TIMEOUT):
            for reader in readers:
                line = await reader.readline()
                if not line:
                    raise RuntimeError("a worker exited before it was listening")
                pids.append(json.loads(line)["pid"])
        shown = f"[{host}]" if ":" in host else host
        log.info(
            "proxy_started",
            addresses=[f"http://{shown}:{port}"],
            routes=routes,
            pid=os.getpid(),
            workers=n,
            worker_pids=pids,
        )

        def forward(sig: signal.Signals) -> None:
            for process in processes:
                if process.returncode is None:
                    process.send_signal(sig)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, forward, sig)
        codes = await asyncio.gather(*(p.wait() for p in processes))
        log.info("proxy_stopped", workers=n, exit_codes=codes)
        return 0 if all(code == 0 for code in codes) else 1
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
        reserved.close()
