"""Large bodies stream through a real proxy process without being held in memory."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from .conftest import Upstream
from .processes import start_proxy

SIZE = 50 * 1024 * 1024
# The proxy may buffer a few chunks per direction; holding either 50 MB body would blow this.
MAX_GROWTH_KIB = 20 * 1024


async def _body(size: int) -> AsyncIterator[bytes]:
    block = b"u" * 65536
    while size > 0:
        yield block[:size]
        size -= len(block)


async def test_50mb_upload_and_download_stream_with_bounded_memory(
    upstream: Upstream, tmp_path: Path
) -> None:
    """50 MB each way arrives whole while the proxy's peak RSS grows by far less than that."""
    spool = tmp_path / "spool"
    spool.mkdir()
    config = tmp_path / "routes.toml"
    config.write_text(
        f'[server]\nspool_dir = "{spool}"\n'
        f'[[routes]]\nprefix = "/big"\nupstream = "{upstream.url}"\n'
        f'[[routes]]\nprefix = "/live"\nupstream = "{upstream.url}"\nrequest_buffering = false\n'
    )
    proxy = await start_proxy(config)
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{proxy.url}/big/warm-up") as r:
                assert r.status == 200
            baseline = proxy.rss_kib("VmHWM")

            for framing in ("length", "chunked"):
                received = 0
                url = f"{proxy.url}/big/download?size={SIZE}&framing={framing}"
                async with client.get(url) as r:
                    assert r.status == 200
                    async for chunk in r.content.iter_any():
                        received += len(chunk)
                assert received == SIZE

            headers = {"Content-Length": str(SIZE)}
            async with client.post(
                f"{proxy.url}/big/stream-upload", data=_body(SIZE), headers=headers
            ) as r:
                assert await r.json() == {"received": SIZE}
            assert upstream.last.header("Content-Length") == str(SIZE)
            # Chunked: buffered whole (on disk, not in memory), then sent with its length...
            async with client.post(f"{proxy.url}/big/stream-upload", data=_body(SIZE)) as r:
                assert await r.json() == {"received": SIZE}
            assert upstream.last.header("Content-Length") == str(SIZE)
            assert upstream.last.header("Transfer-Encoding") is None
            assert _open_files_in(proxy.pid, spool) == []  # and its space freed at once
            # ...or, with request_buffering off, streamed as it arrives, still chunked.
            async with client.post(f"{proxy.url}/live/stream-upload", data=_body(SIZE)) as r:
                assert await r.json() == {"received": SIZE}
            assert upstream.last.header("Transfer-Encoding") == "chunked"

            growth = proxy.rss_kib("VmHWM") - baseline
    finally:
        await proxy.stop()
    print(f"proxy peak RSS growth over 5 x 50 MB: {growth} KiB")
    assert growth < MAX_GROWTH_KIB


def _open_files_in(pid: int, directory: Path) -> list[str]:
    """Files under ``directory`` the process still holds open (deleted ones included)."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed while we looked
        if target.startswith(str(directory)):
            found.append(target)
    return found
