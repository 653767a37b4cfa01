"""The proxy's errors: the bottom layer, importing nothing of the proxy.

Every layer raises these, the wire's refusals included; each ProxyError names the status
and code it is answered with, and ``proxy/http/replies.py`` is the one place that turns it
into the JSON answer a client gets.

    Exception
    ├── ConfigError               start-up: routes.toml is invalid (every problem listed)
    ├── ListenError               start-up: the address cannot be listened on (exit 1)
    └── ProxyError                a request the proxy answers itself (JSON + X-Proxy-Error)
        ├── BadRequestError       400 bad_request
        ├── UnauthorizedError     401 unauthorized (clients are configured; no valid key)
        ├── ForbiddenError        403 forbidden (source address, or a route the key may not use)
        ├── NoRouteError          404 no_route
        ├── MethodNotAllowedError 405 method_not_allowed (TRACE, CONNECT; /-/ but GET, HEAD)
        ├── RequestTimeoutError   408 request_timeout (the request head came too slowly)
        ├── BodyTooLargeError     413 body_too_large (a buffered chunked body over its limit)
        ├── MisdirectedError      421 misdirected_request (a Host that server.hosts does not list)
        ├── RateLimitedError      429 rate_limited (our own limit, or the route is paused)
        ├── HeadTooLargeError     431 header_too_large (request head over 64 KiB or 128 fields)
        ├── InternalError         500 internal_error (a bug: the handler failed)
        ├── UnsupportedCodingError  501 not_implemented (a transfer coding other than chunked)
        ├── UpstreamUnreachableError  502 upstream_unreachable
        ├── OverloadedError       503 overloaded (a connection, in-flight or body spool cap reached)
        ├── TokenUnavailableError 503 token_unavailable (no valid token can be had now)
        ├── StateBackendError     503 state_unavailable (Redis away, on_failure = "closed")
        ├── UpstreamTimeoutError  504 upstream_timeout
        ├── VersionError          505 http_version_not_supported (not HTTP/1.0 or 1.1)
        └── LoopDetectedError     508 loop_detected (the request carries our own Via)

Upstream responses, errors included, are never turned into these: they pass through.
Messages are written for the client and never hold a header value, token or secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar


class ConfigError(Exception):
    """routes.toml could not be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class ListenError(Exception):
    """The proxy could not listen on ``host``:``port``; ``reason`` is the system's word.

    Kept apart from other OSErrors of start-up (a trust store is one, ssl.SSLError) so that
    only a failed bind or listen is ever reported as one."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host = host
        self.port = port
        self.reason = reason
        shown = f"[{host}]" if ":" in host else host
        super().__init__(f"cannot listen on {shown}:{port}: {reason}")


class ProxyError(Exception):
    """A failure the proxy reports to its client as a JSON error body."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        # Headers the status calls for: WWW-Authenticate on a 401, Allow on a 405.
        self.headers: Mapping[str, str] = headers or {}


class BadRequestError(ProxyError):
    status = 400
    code = "bad_request"


class UnauthorizedError(ProxyError):
    status = 401
    code = "unauthorized"


class ForbiddenError(ProxyError):
    status = 403
    code = "forbidden"


class NoRouteError(ProxyError):
    status = 404
    code = "no_route"


class RequestTimeoutError(ProxyError):
    status = 408
    code = "request_timeout"


class BodyTooLargeError(ProxyError):
    status = 413
    code = "body_too_large"


class MisdirectedError(ProxyError):
    status = 421
    code = "misdirected_request"


class HeadTooLargeError(ProxyError):
    status = 431
    code = "header_too_large"


class InternalError(ProxyError):
    status = 500
    code = "internal_error"


class MethodNotAllowedError(ProxyError):
    status = 405
    code = "method_not_allowed"


class UnsupportedCodingError(ProxyError):
    status = 501
    code = "not_implemented"


class LoopDetectedError(ProxyError):
    status = 508
    code = "loop_detected"


class OverloadedError(ProxyError):
    status = 503
    code = "overloaded"


class VersionError(ProxyError):
    status = 505
    code = "http_version_not_supported"


class RateLimitedError(ProxyError):
    """The request would wait too long for a rate-limit slot or a route's pause to end; it
    was never sent upstream."""

    status = 429
    code = "rate_limited"

    def __init__(self, limit: str, retry_in: float) -> None:
        super().__init__(f"rate limit reached ({limit}); retry later", retry_after=retry_in)
        self.limit = limit


class UpstreamUnreachableError(ProxyError):
    status = 502
    code = "upstream_unreachable"


class TokenUnavailableError(ProxyError):
    """No token that the issuer still accepts, and none can be fetched right now."""

    status = 503
    code = "token_unavailable"

    def __init__(self, auth: str, reason: str, retry_in: float, why: str | None = None) -> None:
        # ``why``: the sentence /-/ready shows for this auth too, so both tell one story.
        super().__init__(
            f"no valid token for auth {auth!r}: {why}"
            if why
            else f"no valid token for auth {auth!r} (last token endpoint outcome: {reason})",
            retry_after=retry_in,
        )
        self.auth = auth
        self.reason = reason


class StateBackendError(ProxyError):
    """A limit shared by the fleet cannot be checked: its Redis is away, and
    ``on_failure = "closed"`` forbids falling back to this process's share."""

    status = 503
    code = "state_unavailable"

    def __init__(self, limit: str, retry_in: float = 1.0) -> None:
        super().__init__(
            f"rate limit state unavailable ({limit}); retry later", retry_after=retry_in
        )
        self.limit = limit


class UpstreamTimeoutError(ProxyError):
    status = 504
    code = "upstream_timeout"
