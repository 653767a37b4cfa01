"""The supervisor's view of its group: /-/metrics merged and /-/status of every worker.

A worker that receives one of those on the shared port asks the supervisor here (over the
group's private wire); the supervisor asks every worker for its own and answers for all.
Snapshots of every worker's metrics are also taken every SNAPSHOT_EVERY seconds, so a
worker that dies between scrapes loses little of what it counted (proxy/observe/merge.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Sequence
from typing import Any, Final, Protocol

from ..observe.merge import GroupMetrics
from ..release import version
from . import wire
from .member import GATHER_TIMEOUT, VIEWS, supervisor_socket, unavailable, worker_socket

SNAPSHOT_EVERY: Final = 5.0


class Member(Protocol):
    """One place in the group: the index stays, the process changes across restarts."""

    @property
    def index(self) -> int: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def up(self) -> bool:
        """Listening, and not exited since."""

    @property
    def restarts(self) -> int: ...

    @property
    def last_exit(self) -> str | None: ...


class GroupView:
    """Answers the workers' requests for the group's views on the supervisor's socket."""

    __slots__ = ("_directory", "_lock", "_members", "_metrics", "_server", "_task")

    def __init__(self, directory: str, members: Sequence[Member]) -> None:
        self._directory = directory
        self._members = members
        self._metrics = GroupMetrics()
        # One snapshot at a time: an older answer landing after a newer one would take a
        # worker's counts back.
        self._lock = asyncio.Lock()
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._server = await wire.listen(supervisor_socket(self._directory), self._answer)
        self._task = asyncio.get_running_loop().create_task(self._every())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def retire(self, index: int) -> None:
        """Worker ``index`` exited: what it counted stays in the group's metrics."""
        self._metrics.retire(index)

    async def _answer(self, request: str) -> wire.Answer:
        view, _, which = request.partition(" ")
        if view not in VIEWS or not (which == "" or which.isdigit()):
            return 404, b""
        if which:
            if int(which) >= len(self._members):
                return 404, b""
            member = self._members[int(which)]
            try:
                return 200, await self._ask(member, view)
            except (OSError, TimeoutError, ValueError):
                return unavailable(f"worker {member.index} did not answer")
        if view == "metrics":
            async with self._lock:
                await self._snapshot()
                return 200, self._metrics.exposition()
        return 200, await self._status()

    async def _ask(self, member: Member, view: str) -> bytes:
        if not member.up:
            raise ConnectionError(f"worker {member.index} is not running")
        async with asyncio.timeout(GATHER_TIMEOUT):
            status, body = await wire.ask(worker_socket(self._directory, member.index), view)
        if status != 200:
            raise ValueError(f"worker {member.index} answered {status}")
        return body

    async def _snapshot(self) -> None:
        """Every worker's metrics now; a worker that does not answer keeps its last."""
        asked = [(member, member.pid) for member in self._members if member.up]
        answers = await asyncio.gather(
            *(self._ask(member, "metrics") for member, _ in asked), return_exceptions=True
        )
        for (member, pid), answer in zip(asked, answers, strict=True):
            # A worker that exited meanwhile was retired with its previous snapshot: this
            # one would take its place under the index of its successor.
            if isinstance(answer, bytes) and member.up and member.pid == pid:
                self._metrics.seen(member.index, answer)

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_EVERY)
            async with self._lock:
                await self._snapshot()

    async def _status(self) -> bytes:
        members = list(self._members)
        answers = await asyncio.gather(
            *(self._ask(member, "status") for member in members), return_exceptions=True
        )
        workers: list[dict[str, Any]] = [
            {
                "index": member.index,
                "pid": member.pid,
                "up": member.up,
                "restarts": member.restarts,
                "last_exit": member.last_exit,
                "status": json.loads(answer) if isinstance(answer, bytes) else None,
            }
            for member, answer in zip(members, answers, strict=True)
        ]
        return json.dumps(
            {"version": version(), "supervisor_pid": os.getpid(), "workers": workers}
        ).encode()
