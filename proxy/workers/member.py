"""A worker's side of its group: telling the supervisor it listens, answering the
supervisor with its own views, and asking the supervisor for the group's."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import parse_qs

import structlog

from ..errors import BadRequestError, NoRouteError
from . import wire

log = structlog.get_logger("proxy.workers")

READY_FD_ENV: Final = "PROXY_READY_FD"
VIEWS: Final = frozenset({"metrics", "status"})
# The supervisor waits GATHER_TIMEOUT for each worker, all at once; a little more here.
GATHER_TIMEOUT: Final = 2.0
ASK_TIMEOUT: Final = GATHER_TIMEOUT + 1.0


def announce_ready(addresses: list[str]) -> None:
    """In a worker: tell the supervisor we listen (no-op when not started by one)."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    with os.fdopen(int(fd), "w") as pipe:
        pipe.write(json.dumps({"pid": os.getpid(), "addresses": addresses}) + "\n")


def worker_socket(directory: str, index: int) -> str:
    return os.path.join(directory, f"worker-{index}.sock")


def supervisor_socket(directory: str) -> str:
    return os.path.join(directory, "group.sock")


def unavailable(reason: str) -> wire.Answer:
    """A 503 with the JSON body /-/ready gives when it is not ready."""
    return 503, json.dumps({"status": "unavailable", "reason": reason}).encode()


async def serve_own_views(
    directory: str, index: int, view: Callable[[str], Awaitable[bytes]]
) -> asyncio.Server:
    """Answer the supervisor's ``metrics`` and ``status`` with this worker's own ``view``."""

    async def answer(request: str) -> wire.Answer:
        if request not in VIEWS:
            return 404, b""
        return 200, await view(request)

    return await wire.listen(worker_socket(directory, index), answer)


class GroupLink:
    """What a worker knows of its group: its own index, how many workers there are, and
    where the supervisor answers for all of them."""

    __slots__ = ("_supervisor", "directory", "index", "size")

    def __init__(self, directory: str, index: int, size: int) -> None:
        self._supervisor = supervisor_socket(directory)
        self.directory = directory
        self.index = index
        self.size = size

    async def view(self, view: str, query: str) -> wire.Answer:
        """The group's ``view`` (metrics or status), or one worker's own when the query
        says ``worker=<index>``: status 200 and the body, or an error status with a JSON
        body. Raises BadRequestError for a malformed index, NoRouteError for one outside
        the group."""
        worker = self._worker(query)
        request = view if worker is None else f"{view} {worker}"
        try:
            async with asyncio.timeout(ASK_TIMEOUT):
                return await wire.ask(self._supervisor, request)
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning("group_unreachable", view=view, error=type(exc).__name__)
            return unavailable("the group's supervisor did not answer")

    def _worker(self, query: str) -> int | None:
        given = parse_qs(query).get("worker")
        if not given:
            return None
        last = self.size - 1
        # ASCII digits, a few of them: str.isdigit() takes "²", which int() refuses.
        if not (given[-1].isascii() and given[-1].isdigit() and len(given[-1]) <= 6):
            raise BadRequestError(f"worker must be a worker's index, 0 to {last}")
        index = int(given[-1])
        if index > last:
            raise NoRouteError(f"no such worker: the group's are 0 to {last}")
        return index
