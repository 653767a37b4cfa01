"""Large bodies stream through a real proxy process without being held in memory."""

from __future__ import annotations

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
    config = tmp_path / "routes.toml"
    config.write_text(f'[[routes]]\nprefix = "/big"\nupstream = "{upstream.url}"\n')
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
            async with client.post(f"{proxy.url}/big/stream-upload", data=_body(SIZE)) as r:
                assert await r.json() == {"received": SIZE}
            assert upstream.last.header("Transfer-Encoding") == "chunked"

            growth = proxy.rss_kib("VmHWM") - baseline
    finally:
        await proxy.stop()
    print(f"proxy peak RSS growth over 4 x 50 MB: {growth} KiB")
    assert growth < MAX_GROWTH_KIB
