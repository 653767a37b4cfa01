"""The supervisor of ``serve --workers N``: starts the workers, keeps them running, and
passes SIGTERM/SIGINT/SIGHUP on.

A worker that exits while the group serves (a crash, the OOM killer, a stray kill) is
started again under the same index after a backoff: FIRST_DELAY once it had run STABLE
seconds, doubling up to MAX_DELAY while restarts keep failing, so a worker that cannot
start (a config file edited into an invalid one) costs a start every 30 seconds, not a
core. The other workers keep the port meanwhile (SO_REUSEPORT). On SIGTERM or SIGINT no
worker is restarted: the signal is forwarded, and the supervisor exits once all have.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Final

import structlog

from ..errors import ListenError
from ..notify import Notifier
from ..release import version
from .member import READY_FD_ENV, supervisor_socket
from .view import GroupView

log = structlog.get_logger("proxy.workers")

STARTUP_TIMEOUT: Final = 30.0
FIRST_DELAY: Final = 0.5
MAX_DELAY: Final = 30.0
STABLE: Final = 10.0


class Backoff:
    """Seconds to wait before a worker's restart, given how long its last run lasted."""

    __slots__ = ("_next", "first", "most", "stable")

    def __init__(
        self, first: float = FIRST_DELAY, most: float = MAX_DELAY, stable: float = STABLE
    ) -> None:
        self.first = first
        self.most = most
        self.stable = stable
        self._next = first

    def delay(self, ran: float) -> float:
        if ran >= self.stable:
            self._next = self.first
        delay = self._next
        self._next = min(delay * 2, self.most)
        return delay


class Worker:
    """One place of the group: its index stays, its process changes with each restart."""

    __slots__ = (
        "backoff",
        "index",
        "last_exit",
        "pid",
        "process",
        "reload",
        "restarts",
        "started",
        "up",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self.up = False
        self.restarts = 0
        self.last_exit: str | None = None
        self.started = 0.0
        self.reload = False  # a SIGHUP came while it was starting: send it once it listens
        self.backoff = Backoff()

    def signal(self, sig: signal.Signals) -> None:
        """Signal the worker's process, unless it has exited.

        Not Process.send_signal: its Popen.poll() can reap a worker that has just exited
        before asyncio's child watcher does, which then reports exit code 255 for it."""
        process = self.process
        if process is not None and process.returncode is None:
            # Not yet reaped by the watcher, so the pid is still this (maybe dead) child's.
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)


class Group:
    """N workers running ``command`` (plus each one's --worker-index)."""

    def __init__(
        self, command: Sequence[str], n: int, directory: str, notify: Notifier | None = None
    ) -> None:
        self._notify = notify
        self._command = list(command)
        self._workers = [Worker(index) for index in range(n)]
        self._view = GroupView(directory, self._workers)
        self._stopping = asyncio.Event()

    async def run(self, started: Callable[[list[int]], None]) -> int:
        """Serve until SIGTERM/SIGINT; ``started`` is told the pids once all listen."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        workers = self._workers
        ready: list[bool] = []
        await self._view.start()
        try:
            readers = [await self._spawn(worker) for worker in workers]
            ready = await asyncio.gather(*map(self._ready, workers, readers))
            if not all(ready) and not self._stopping.is_set():
                failed = [w.index for w, up in zip(workers, ready, strict=True) if not up]
                log.error("worker_failed_to_start", indexes=failed)
                self._stop(signal.SIGTERM)
            elif not self._stopping.is_set():
                started([w.pid for w in workers if w.pid is not None])
            await asyncio.gather(*map(self._watch, workers))
        finally:
            await self._view.close()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        codes = [w.process.returncode if w.process else None for w in workers]
        log.info("proxy_stopped", workers=len(workers), exit_codes=codes)
        return 0 if all(ready) and all(code == 0 for code in codes) else 1

    def kill(self) -> None:
        """The last resort: no worker outlives its supervisor."""
        for worker in self._workers:
            worker.signal(signal.SIGKILL)

    async def _spawn(self, worker: Worker) -> asyncio.StreamReader:
        read_fd, write_fd = os.pipe()
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *self._command,
                "--worker-index",
                str(worker.index),
                env={**os.environ, READY_FD_ENV: str(write_fd)},
                pass_fds=(write_fd,),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        worker.pid = worker.process.pid
        worker.started = time.monotonic()
        worker.reload = False  # it reads the config file as it is now
        log.debug("worker_spawned", index=worker.index, pid=worker.pid)
        if self._stopping.is_set():  # the stop came while it was being started
            worker.signal(signal.SIGTERM)
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            functools.partial(asyncio.StreamReaderProtocol, reader), os.fdopen(read_fd, "rb")
        )
        return reader

    async def _ready(self, worker: Worker, reader: asyncio.StreamReader) -> bool:
        """Wait for the worker's "listening" line; False if it exits or stays silent."""
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                line = await reader.readline()
        except TimeoutError:
            worker.signal(signal.SIGKILL)
            return False
        if not line:  # it exited
            return False
        worker.pid = json.loads(line)["pid"]
        worker.up = True
        if worker.reload:
            worker.reload = False
            worker.signal(signal.SIGHUP)
        return True

    async def _watch(self, worker: Worker) -> None:
        """Restart the worker whenever it exits, until the group stops."""
        while worker.process is not None:
            code = await worker.process.wait()
            worker.up = False
            self._view.retire(worker.index)
            if self._stopping.is_set():
                return
            ran = time.monotonic() - worker.started
            delay = worker.backoff.delay(ran)
            exit_code, by_signal = _exit(code)
            worker.last_exit = f"signal {by_signal}" if by_signal else f"exit code {exit_code}"
            log.warning(
                "worker_exited",
                index=worker.index,
                pid=worker.pid,
                exit_code=exit_code,
                signal=by_signal,
                ran=round(ran, 3),
                restart_in=delay,
            )
            reader = await self._respawn(worker, delay)
            if reader is None:
                return
            if await self._ready(worker, reader):
                log.info("worker_restarted", index=worker.index, pid=worker.pid)

    async def _respawn(self, worker: Worker, delay: float) -> asyncio.StreamReader | None:
        """Start the worker again after ``delay``; None if the group stops meanwhile."""
        while True:
            try:
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
                return None
            except TimeoutError:
                pass
            worker.restarts += 1
            worker.started = time.monotonic()
            try:
                return await self._spawn(worker)
            except OSError as exc:  # out of processes or descriptors: try again later
                delay = worker.backoff.delay(ran=0.0)
                log.error(
                    "worker_spawn_failed", index=worker.index, error=str(exc), restart_in=delay
                )

    def _stop(self, sig: signal.Signals) -> None:
        if self._notify is not None and not self._stopping.is_set():
            self._notify.stopping()
        self._stopping.set()
        for worker in self._workers:
            worker.signal(sig)

    def _reload(self) -> None:
        for worker in self._workers:
            if worker.up:
                worker.signal(signal.SIGHUP)
            else:
                # A worker still starting may not handle SIGHUP yet (its default ends it).
                worker.reload = True


def _exit(code: int) -> tuple[int | None, str | None]:
    """A return code as (exit code, None) or (None, the name of the signal that ended it)."""
    if code >= 0:
        return code, None
    try:
        return None, signal.Signals(-code).name
    except ValueError:  # a real-time signal has no name of its own
        return None, str(-code)


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


def _private_directory() -> str:
    """A directory (mode 0700) for the group's sockets, with paths short enough for one."""
    directory = tempfile.mkdtemp(prefix="proxy-group-")
    if len(supervisor_socket(directory)) > 100:  # sun_path holds 108 bytes
        os.rmdir(directory)
        directory = tempfile.mkdtemp(prefix="proxy-group-", dir="/tmp")
    return directory


async def supervise(
    argv: Sequence[str],
    host: str,
    port: int,
    n: int,
    routes: list[str],
    notify: Notifier | None = None,
    scheme: str = "http",
) -> int:
    """Run n workers of ``python -m proxy serve`` (argv without host/port/workers);
    ``notify`` (systemd) hears READY=1 once all listen, STOPPING=1 on SIGTERM/SIGINT;
    ``scheme``: "https" when the listener serves TLS (each worker loads its own)."""
    reserved, port = _reserve_port(host, port)
    directory = _private_directory()
    command = [
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
        "--group-dir",
        directory,
    ]
    group = Group(command, n, directory, notify)
    shown = f"[{host}]" if ":" in host else host

    def started(pids: list[int]) -> None:
        log.info(
            "proxy_started",
            version=version(),
            addresses=[f"{scheme}://{shown}:{port}"],
            routes=routes,
            pid=os.getpid(),
            workers=n,
            worker_pids=pids,
        )
        if notify is not None:
            notify.ready()

    try:
        return await group.run(started)
    finally:
        group.kill()
        reserved.close()
        shutil.rmtree(directory, ignore_errors=True)
