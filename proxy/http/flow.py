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


class ByteQueue:
    """Bytes held in arrival order, counted in bytes, never as one object per piece.

    llhttp hands over a body chunk by chunk; a body of two-byte chunks kept as a list of
    ``bytes`` costs ~35 bytes of object overhead per two bytes of data. The first piece is
    kept as it came (the common case, one piece between reads, costs no copy); later
    pieces are merged into one ``bytearray``.
    """

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: bytes | bytearray = b""

    def __len__(self) -> int:
        return len(self._data)

    def append(self, piece: bytes) -> None:
        data = self._data
        if not data:
            self._data = piece
        elif type(data) is bytes:
            merged = bytearray(data)
            merged += piece
            self._data = merged
        else:
            data += piece  # a bytearray: extended in place

    def take(self, limit: int = -1) -> bytes:
        """Up to ``limit`` bytes (all when negative) from the front."""
        data = self._data
        if limit < 0 or limit >= len(data):
            self._data = b""
            return data if type(data) is bytes else bytes(data)
        piece = bytes(data[:limit])
        if isinstance(data, bytearray):
            del data[:limit]  # O(1): a bytearray drops its head by moving its start
        else:
            self._data = data[limit:]
        return piece

    def clear(self) -> int:
        """Drop everything; return how many bytes were held."""
        held = len(self._data)
        self._data = b""
        return held
