"""Slowloris load for ``make bench``: N connections that send a request head one byte a
second and reconnect when the proxy cuts them. Run as
``python -m bench.slowloris --port P --connections 1000 --seconds 8``; prints one JSON line
when all connections are open, another with how many were cut when it ends."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource

HEAD = b"GET /api/slow HTTP/1.1\r\nHost: p\r\nX-Slow: " + b"a" * 4096


async def trickle(port: int, seconds: float, stats: dict[str, int]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        try:
            for byte in HEAD:
                if loop.time() >= deadline:
                    return
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1)
        except ConnectionError:
            stats["cut"] += 1
        finally:
            writer.close()


async def main(port: int, connections: int, seconds: float) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    stats = {"cut": 0}
    tasks = [asyncio.create_task(trickle(port, seconds, stats)) for _ in range(connections)]
    await asyncio.sleep(1)
    print(json.dumps({"open": connections}), flush=True)
    await asyncio.gather(*tasks)
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.port, args.connections, args.seconds))
