"""serve --workers N as one group: a dead worker is restarted under its index, /-/metrics
merges every worker's (and keeps a dead one's counts), /-/status shows every worker, and
each worker's log lines say which one it is."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.errors import BadRequestError, NoRouteError
from proxy.observe.logs import LineBuffer
from proxy.observe.metrics import Metrics
from proxy.workers import GroupLink, serve_own_views
from proxy.workers.supervisor import Backoff
from proxy.workers.view import GroupView

from .conftest import Scripted, get, route
from .processes import ProxyProcess, start_proxy

OPS_KEY = "ops-key-0123456789abcdef"
OPS = {"X-Proxy-Key": OPS_KEY}
# The lines only the supervisor writes: every other line comes from a worker.
SUPERVISOR_EVENTS = {"proxy_started", "proxy_stopped", "worker_exited", "worker_restarted"}


class Group:
    """A running ``serve --workers 2`` whose log lines are read as they come."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self.proxy = proxy
        self.events = [json.loads(line) for line in proxy.lines if line.startswith("{")]
        self._arrived = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, config: Path) -> Group:
        return cls(await start_proxy(config, "--workers", "2"))

    async def _read(self) -> None:
        stdout = self.proxy.process.stdout
        assert stdout is not None
        while raw := await stdout.readline():
            line = raw.decode().rstrip("\n")
            self.proxy.lines.append(line)
            if line.startswith("{"):
                self.events.append(json.loads(line))
                self._arrived.set()

    def logged(self, event: str, **fields: object) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["event"] == event and all(e.get(k) == v for k, v in fields.items())
        ]

    async def wait_for(self, event: str, count: int = 1, **fields: object) -> dict[str, Any]:
        """The count-th line of ``event`` with these fields, once it is logged."""
        async with asyncio.timeout(15):
            while len(self.logged(event, **fields)) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.logged(event, **fields)[count - 1]

    async def stop(self) -> int:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        code = await self.proxy.stop()
        self.events = [json.loads(line) for line in self.proxy.lines if line.startswith("{")]
        return code


async def _json(client: aiohttp.ClientSession, url: str) -> Any:
    async with client.get(url, headers=OPS) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def _scrape(client: aiohttp.ClientSession, url: str) -> str:
    async with client.get(url, headers=OPS) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await response.text()


def _sample(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


async def _send(client: aiohttp.ClientSession, url: str, n: int) -> None:
    """n requests, ten at a time, each on a connection of its own (so both workers get some)."""
    for start in range(0, n, 10):
        answers = await asyncio.gather(
            *(get(client, f"{url}/api/{i}", OPS) for i in range(start, min(n, start + 10)))
        )
        assert [a.status for a in answers] == [200] * len(answers)


def _config(tmp_path: Path, scripted: Scripted) -> Path:
    config = tmp_path / "routes.toml"
    config.write_text(
        f'[server]\nadmin_access = "client:ops"\n{route(scripted)}'
        f'[clients.ops]\nkey = "{OPS_KEY}"\n'
    )
    return config


@pytest.fixture
async def spread() -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose every request takes a new connection: they spread over the workers."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
        yield client


async def test_a_killed_worker_is_restarted_under_its_index_while_the_other_serves(
    scripted: Scripted, tmp_path: Path, spread: aiohttp.ClientSession
) -> None:
    """kill -9 of a worker: the other keeps answering, the dead one comes back with a new pid
    and the same index (logged, shown in /-/status), and a SIGHUP reaches it too."""
    config = _config(tmp_path, scripted)
    group = await Group.start(config)
    url = group.proxy.url
    try:
        before = (await _json(spread, f"{url}/-/status"))["workers"]
        assert [(w["index"], w["up"], w["restarts"]) for w in before] == [
            (0, True, 0),
            (1, True, 0),
        ]
        assert all(w["status"]["routes"]["/api"]["upstream"] == scripted.url for w in before)
        os.kill(before[0]["pid"], signal.SIGKILL)
        exited = await group.wait_for("worker_exited", index=0)
        assert (exited["pid"], exited["signal"], exited["exit_code"]) == (
            before[0]["pid"],
            "SIGKILL",
            None,
        )
        await _send(spread, url, 20)  # while worker 0 waits for its restart
        restarted = await group.wait_for("worker_restarted", index=0)
        assert restarted["pid"] != before[0]["pid"]
        after = (await _json(spread, f"{url}/-/status"))["workers"]
        assert [(w["index"], w["pid"], w["up"], w["restarts"]) for w in after] == [
            (0, restarted["pid"], True, 1),
            (1, before[1]["pid"], True, 0),
        ]
        assert after[0]["last_exit"] == "signal SIGKILL"
        assert after[0]["status"]["routes"]["/api"]["upstream"] == scripted.url
        group.proxy.process.send_signal(signal.SIGHUP)
        for index in (0, 1):
            assert (await group.wait_for("config_reloaded", worker=index))["worker"] == index
        await _send(spread, url, 4)
    finally:
        assert await group.stop() == 0
    starts = [(e["worker"], e["pid"]) for e in group.logged("worker_started")]
    assert sorted(starts) == sorted(
        [(0, before[0]["pid"]), (0, restarted["pid"]), (1, before[1]["pid"])]
    )


async def test_the_group_counts_every_request_once_and_never_backwards(
    scripted: Scripted, tmp_path: Path, spread: aiohttp.ClientSession
) -> None:
    """/-/metrics sums both workers' counts (?worker=<i>: one worker's own), a killed
    worker's counts stay in the sum, and every line a worker logs carries its index."""
    config = _config(tmp_path, scripted)
    group = await Group.start(config)
    url = group.proxy.url
    metrics = f"{url}/-/metrics"
    try:
        async with spread.get(metrics) as refused:
            assert refused.status == 403  # server.admin_access holds for the group's view
        await _send(spread, url, 40)
        merged = await _scrape(spread, metrics)
        assert _sample(merged, "proxy_requests_total", route="/api") == 40
        assert _sample(merged, "proxy_request_duration_seconds_count", route="/api") == 40
        assert merged.count("# TYPE proxy_requests_total counter") == 1
        own = [await _scrape(spread, f"{metrics}?worker={i}") for i in (0, 1)]
        counts = [_sample(text, "proxy_requests_total", route="/api") for text in own]
        assert sum(counts) == 40
        assert 0 < counts[0] < 40  # the merged view is not worker 0's
        for query, status in (("worker=2", 404), ("worker=one", 400), ("worker=%C2%B2", 400)):
            async with spread.get(f"{metrics}?{query}", headers=OPS) as wrong:
                assert wrong.status == status

        status = await _json(spread, f"{url}/-/status")
        os.kill(status["workers"][1]["pid"], signal.SIGKILL)
        await group.wait_for("worker_restarted", index=1)
        kept = await _scrape(spread, metrics)
        assert _sample(kept, "proxy_requests_total", route="/api") == 40
        assert _sample(kept, "proxy_request_duration_seconds_count", route="/api") == 40
        await _send(spread, url, 10)
        assert _sample(await _scrape(spread, metrics), "proxy_requests_total", route="/api") == 50
    finally:
        assert await group.stop() == 0
    from_workers = [e for e in group.events if "worker" in e]
    assert {e["worker"] for e in from_workers} == {0, 1}
    assert {e["worker"] for e in from_workers if e["event"] == "access"} == {0, 1}
    others = [e["event"] for e in group.events if "worker" not in e]
    assert set(others) <= SUPERVISOR_EVENTS
    assert (others.count("proxy_started"), others.count("proxy_stopped")) == (1, 1)


async def test_a_worker_that_cannot_start_is_retried_ever_more_slowly(
    scripted: Scripted, tmp_path: Path, spread: aiohttp.ClientSession
) -> None:
    """A restarted worker that exits at once (its config file has gone bad) waits twice as
    long before each next try, while the other worker serves; it comes back once it can."""
    config = _config(tmp_path, scripted)
    good = config.read_text()
    group = await Group.start(config)
    url = group.proxy.url
    try:
        pid = (await _json(spread, f"{url}/-/status"))["workers"][1]["pid"]
        config.write_text('[[routes]]\nprefix = "nope"\n')
        os.kill(pid, signal.SIGKILL)
        first = await group.wait_for("worker_exited", index=1)
        second = await group.wait_for("worker_exited", count=2, index=1)
        config.write_text(good)
        assert (first["signal"], first["restart_in"]) == ("SIGKILL", 0.5)
        assert (second["exit_code"], second["restart_in"]) == (2, 1.0)
        await _send(spread, url, 5)
        await group.wait_for("worker_restarted", index=1)
        assert len(group.logged("worker_exited")) == 2
    finally:
        assert await group.stop() == 0


def test_restarts_back_off_while_they_fail_and_start_afresh_after_a_stable_run() -> None:
    """0.5 s, doubling up to 30 s while each run is short; back to 0.5 s after a long one."""
    backoff = Backoff(first=0.5, most=30.0, stable=10.0)
    delays = [backoff.delay(ran=0.2) for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff.delay(ran=10.0) == 0.5
    assert backoff.delay(ran=0.2) == 1.0


@dataclass
class Member:
    index: int
    pid: int | None
    up: bool = True
    restarts: int = 0
    last_exit: str | None = None


@pytest.fixture
def group_dir() -> Iterator[str]:
    """A short private directory: a Unix socket's path must fit in 108 bytes."""
    directory = tempfile.mkdtemp(prefix="group-")
    yield directory
    shutil.rmtree(directory)


async def test_the_supervisor_merges_what_its_workers_answer_on_their_sockets(
    group_dir: str,
) -> None:
    """Over the group's private sockets: the merged view, one worker's own, its status; a
    worker that stops answering keeps its last counts, one that died keeps them too, and a
    group whose supervisor is gone answers 503."""
    own = [Metrics(), Metrics()]
    for index, metrics in enumerate(own):
        for _ in range(index + 2):
            metrics.count_request("/api", "GET", 200)

    def views(index: int) -> Callable[[str], Awaitable[bytes]]:
        async def view(name: str) -> bytes:
            if name == "metrics":
                return own[index].exposition()
            return json.dumps({"routes": {}, "worker": index}).encode()

        return view

    servers = [await serve_own_views(group_dir, i, views(i)) for i in (0, 1)]
    members = [Member(0, 100), Member(1, 101)]
    supervisor = GroupView(group_dir, members)
    await supervisor.start()
    link = GroupLink(group_dir, 0, 2)
    try:
        status, body = await link.view("metrics", "")
        assert (status, _sample(body.decode(), "proxy_requests_total")) == (200, 5)
        status, body = await link.view("metrics", "worker=1")
        assert (status, _sample(body.decode(), "proxy_requests_total")) == (200, 3)
        status, body = await link.view("status", "")
        shown = json.loads(body)["workers"]
        assert [(w["index"], w["pid"], w["status"]["worker"]) for w in shown] == [
            (0, 100, 0),
            (1, 101, 1),
        ]

        servers[1].close()  # worker 1 stops answering
        await servers[1].wait_closed()
        own[1].count_request("/api", "GET", 200)
        status, body = await link.view("metrics", "")
        assert _sample(body.decode(), "proxy_requests_total") == 5
        status, body = await link.view("metrics", "worker=1")
        assert status == 503
        assert json.loads(body)["status"] == "unavailable"
        status, body = await link.view("status", "")
        assert json.loads(body)["workers"][1]["status"] is None

        members[1].up = False  # it died: the supervisor retires it
        supervisor.retire(1)
        own[0].count_request("/api", "GET", 200)
        status, body = await link.view("metrics", "")
        assert _sample(body.decode(), "proxy_requests_total") == 6
        for query, error in (("worker=2", NoRouteError), ("worker=-1", BadRequestError)):
            with pytest.raises(error):
                await link.view("metrics", query)
    finally:
        await supervisor.close()
        servers[0].close()
    status, body = await link.view("metrics", "")
    assert (status, json.loads(body)["status"]) == (503, "unavailable")


class Recorder:
    """A byte sink that keeps each write system call's bytes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self._pending = b""

    def write(self, data: bytes, /) -> int:
        self._pending += data
        return len(data)

    def flush(self) -> None:
        if self._pending:
            self.writes.append(self._pending)
            self._pending = b""


def test_a_workers_log_batches_reach_the_shared_pipe_in_whole_lines() -> None:
    """A worker's batch of lines is written in pieces of whole lines, each within PIPE_BUF
    (never interleaved with another worker's), a longer line whole and alone."""
    lines = [b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * (i * 37 % 900)) for i in range(60)]
    lines.insert(30, b'{"long":"%s"}\n' % (b"y" * 9000))
    sink = Recorder()
    out = LineBuffer(sink, shared=True)
    for line in lines:
        out.write(line)
    out.flush_now()
    assert b"".join(sink.writes) == b"".join(lines)
    assert all(piece.endswith(b"\n") for piece in sink.writes)
    assert [len(p) for p in sink.writes if len(p) > select.PIPE_BUF] == [len(lines[30])]
    assert len(sink.writes) < len(lines) / 3  # still batched
