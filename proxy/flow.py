"""Write flow control shared by both HTTP legs (the server's client connections and the
upstream client's pooled connections): asyncio calls pause_writing/resume_writing, and a
writer awaits ``writable()`` so a slow reader on the other end holds back the sender."""

from __future__ import annotations

import asyncio


class WriteFlow(asyncio.Protocol):
    """A Protocol whose writers wait while the transport's write buffer is full."""

    __slots__ = ("_drain", "_loop", "_write_paused")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def writable(self) -> None:
        """Return once the transport takes writes again (at once when it does now)."""
        if self._write_paused:
            self._drain = self._loop.create_future()
            await self._drain

    def release_writers(self, error: BaseException | None = None) -> None:
        """The connection is gone: wake a waiting writer, with ``error`` if given."""
        drain = self._drain
        if drain is not None and not drain.done():
            if error is None:
                drain.set_result(None)
            else:
                drain.set_exception(error)
