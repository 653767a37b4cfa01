"""The fleet tests' upstream, in a process of its own: it answers every request 200 at
once and notes when each arrived (the system-wide monotonic clock, which the test process
reads too). A path given to ``/-/throttle?path=P&retry=S`` gets one 429 with that
Retry-After first; ``/-/arrivals`` returns every (time, path) so far.

Apart from the tests' own event loop on purpose: there, under coverage tracing and beside
the load generator, a request was stamped when the busy loop got round to reading it, and
requests read in one turn looked like a burst the proxies never sent (CI saw 27 in 10 ms
against a bound of 23 that the proxies' releases kept).

Run: ``python -m tests.recorder``; it prints its port on the first line."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import parse_qs, urlsplit


class _Upstream:
    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str]] = []
        self.throttle: dict[str, int] = {}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                now = time.monotonic()
                target = head.split(b" ", 2)[1].decode()
                writer.write(self._answer(now, target))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, now: float, target: str) -> bytes:
        parts = urlsplit(target)
        if parts.path == "/-/arrivals":
            body = json.dumps(self.arrivals).encode()
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        if parts.path == "/-/throttle":
            query = parse_qs(parts.query)
            self.throttle[query["path"][0]] = int(query["retry"][0])
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        self.arrivals.append((now, target))
        retry = self.throttle.pop(target, None)
        if retry is not None:
            return (
                b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: %d\r\n"
                b"Content-Length: 0\r\n\r\n" % retry
            )
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def main() -> None:
    upstream = _Upstream()
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
