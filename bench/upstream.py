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
from typing import cast

from aiohttp import web

from .procs import serve_announced

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


class RawRecorder(asyncio.Protocol):
    """A bare-bones upstream for rate benchmarks at 10,000 req/s: aiohttp's server would
    take half a core of its own at that rate, and the proxy's workers need the cores.
    Answers every bodyless request with BODY and records its arrival time;
    ``GET /-/arrivals`` returns (and forgets) them."""

    def __init__(self, arrivals: list[float]) -> None:
        self.arrivals = arrivals
        self.transport: asyncio.Transport | None = None
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP server's: a Transport

    def data_received(self, data: bytes) -> None:
        data = self.pending + data
        *heads, self.pending = data.split(b"\r\n\r\n")
        now = time.monotonic()
        out = []
        for head in heads:
            if head.startswith(b"GET /-/arrivals"):
                body = json.dumps(self.arrivals).encode()
                self.arrivals.clear()
            else:
                self.arrivals.append(now)
                body = BODY
            out.append(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
            )
        assert self.transport is not None
        self.transport.write(b"".join(out))


async def main(port: int, raw: bool = False) -> None:
    if raw:
        arrivals: list[float] = []
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: RawRecorder(arrivals), "127.0.0.1", port)
        print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return
    runner = web.AppRunner(build(), access_log=None, client_max_size=0)
    await runner.setup()
    await serve_announced(runner, web.TCPSite(runner, "127.0.0.1", port))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--raw", action="store_true", help="the bare recorder (rate benchmarks)")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.raw))
