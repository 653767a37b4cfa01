"""A fast upstream for benchmarks that records when each request arrived.

Run as ``python -m bench.upstream --port 0``; prints one JSON line with its port.
``GET /-/arrivals`` returns (and forgets) the arrival times, on the system-wide monotonic
clock, so the benchmark can compare them with its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

from aiohttp import web

BODY = b'{"ok": true, "source": "bench-upstream"}'


def build() -> web.Application:
    arrivals: list[float] = []

    async def answer(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        return web.Response(body=BODY, content_type="application/json")

    async def sink(request: web.Request) -> web.Response:
        # Reads and drops an upload of any size, so a streaming benchmark costs no memory here.
        received = 0
        async for chunk in request.content.iter_any():
            received += len(chunk)
        return web.json_response({"bytes": received})

    async def report(request: web.Request) -> web.Response:
        times = arrivals.copy()
        arrivals.clear()
        return web.json_response(times)

    app = web.Application()
    app.router.add_get("/-/arrivals", report)
    app.router.add_post("/sink", sink)
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


async def main(port: int) -> None:
    runner = web.AppRunner(build(), access_log=None, client_max_size=0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(main(parser.parse_args().port))
