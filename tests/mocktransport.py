"""A scripted Transport (proxy/http/transport.py) for the policy above the wire, after
httpx's MockTransport: a handler turns each request into an answer, nothing opens a socket,
and every answer remembers whether it was released."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Self

from multidict import CIMultiDict

from proxy.clock import Clock
from proxy.http.transport import BodyStream, UpstreamRequest

Answer = tuple[int, Mapping[str, str]]


@dataclass(slots=True)
class Request:
    """An UpstreamRequest a test hands a transport itself."""

    method: str = "GET"
    path: str = "/"
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    body: bytes | BodyStream | None = None
    length: int | None = None


@dataclass(slots=True)
class Sent:
    """One request as it reached the transport: its headers as they were then (an
    exchange changes Authorization between attempts), its body read whole."""

    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes | None
    length: int | None
    at: float  # on the transport's clock


class MockResponse:
    """A scripted answer (an UpstreamResponse) that records its release."""

    __slots__ = ("_chunks", "headers", "released", "status")

    def __init__(
        self, status: int = 200, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> None:
        self.status = status
        self.headers: CIMultiDict[str] = CIMultiDict(headers or {})
        self._chunks = [body] if body else []
        self.released = False

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk

    def release(self) -> None:
        self.released = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


Handler = Callable[[Sent], MockResponse | Awaitable[MockResponse]]


class MockTransport:
    """Answers each request with ``handler(sent)`` (which may be a coroutine, and may
    raise as a broken upstream would: TimeoutError, OSError, UpstreamError)."""

    def __init__(self, handler: Handler, clock: Clock | None = None) -> None:
        self._handler = handler
        self._clock = clock
        self.sent: list[Sent] = []
        self.answers: list[MockResponse] = []

    async def send(
        self, request: UpstreamRequest, *, connect_timeout: float, read_timeout: float
    ) -> MockResponse:
        body = request.body
        data = body if body is None or isinstance(body, bytes) else await _read(body)
        at = self._clock.monotonic() if self._clock is not None else 0.0
        sent = Sent(
            request.method, request.path, CIMultiDict(request.headers), data, request.length, at
        )
        self.sent.append(sent)
        answer = self._handler(sent)
        if inspect.isawaitable(answer):
            answer = await answer
        self.answers.append(answer)
        return answer

    def times(self) -> list[float]:
        """When each request was sent, on the clock."""
        return [sent.at for sent in self.sent]

    def unreleased(self) -> list[MockResponse]:
        """Answers still held: at most the one an exchange passed on."""
        return [answer for answer in self.answers if not answer.released]


def script(*answers: Answer | BaseException, then: Answer = (200, {})) -> Handler:
    """A handler giving these answers in order (an exception is raised), then ``then``."""
    queue = list(answers)

    def handler(sent: Sent) -> MockResponse:
        answer = queue.pop(0) if queue else then
        if isinstance(answer, BaseException):
            raise answer
        status, headers = answer
        return MockResponse(status, headers)

    return handler


async def _read(body: BodyStream) -> bytes:
    chunks = []
    while chunk := await body.readany():
        chunks.append(chunk)
    return b"".join(chunks)
