"""The front door of every vendor path: log, latency, injected faults, bearer check, routing.

Each vendor prefix is served by one gate. A request is logged on arrival (token fields, or
what its bearer token says, decided at that instant), then delayed by the target's latency,
then answered by an injected fault if one is pending, else by the vendor's handler. API gates
check the bearer token (and any throttle) before routing, as a gateway in front of the API does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.typedefs import Handler

from .errors import ErrorBody, json_error, phrase, retry_after_value
from .log import ApiEntry, LogEntry, TokenEntry
from .settings import Vendor
from .state import STATE, Fault, SandboxState
from .tokens import BearerFailure, IssuedToken

FORM: Final = "application/x-www-form-urlencoded"
BodyFormat = Literal["form", "json"]
_H = TypeVar("_H")


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A token request as received: ``fields`` is ``None`` when the body is not in the format
    the endpoint reads (wrong content type, undecodable, or JSON that is not an object)."""

    content_type: str | None
    fields: dict[str, Any] | None
    duplicates: frozenset[str]
    authorizations: tuple[str, ...]
    basic_auth: tuple[str, str] | None


TokenHandler = Callable[[web.Request, TokenRequest, SandboxState], Awaitable[web.StreamResponse]]
ApiHandler = Callable[[web.Request, IssuedToken, SandboxState], Awaitable[web.StreamResponse]]
Throttle = Callable[[web.Request, IssuedToken, SandboxState, float], web.StreamResponse | None]


@dataclass(frozen=True, slots=True)
class Gate:
    """One vendor prefix: who it pretends to be and how that vendor words its errors."""

    vendor: Vendor
    target: str
    error: ErrorBody
    realm: str = ""


def raw_headers(request: web.Request) -> list[list[str]]:
    """Every header as received, in order, repeats included."""
    return [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers]


def parse_basic(authorizations: tuple[str, ...]) -> tuple[str, str] | None:
    """``(id, secret)`` from a single ``Authorization: Basic`` header, else ``None``."""
    if len(authorizations) != 1:
        return None
    scheme, _, credentials = authorizations[0].strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    client_id, colon, secret = decoded.partition(":")
    return (client_id, secret) if colon else None


async def read_token_request(request: web.Request, body_format: BodyFormat) -> TokenRequest:
    """Parse a token request's body and client authentication without judging them."""
    authorizations = tuple(request.headers.getall("Authorization", ()))
    content_type = request.headers.get("Content-Type")
    fields: dict[str, Any] | None = None
    duplicates: set[str] = set()
    raw = await request.read()
    if body_format == "form" and request.content_type == FORM:
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
        except ValueError:
            pairs = None
        if pairs is not None:
            fields = {}
            for name, value in pairs:
                if name in fields:
                    duplicates.add(name)
                else:
                    fields[name] = value
    elif body_format == "json" and request.content_type == "application/json":
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        fields = parsed if isinstance(parsed, dict) else None
    return TokenRequest(
        content_type, fields, frozenset(duplicates), authorizations, parse_basic(authorizations)
    )


def _hang_up(request: web.Request) -> web.Response:
    # Abort rather than close: the client must see the connection drop with no response.
    # aiohttp then fails to write the placeholder below and drops it quietly.
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=204)


def _fault_response(request: web.Request, gate: Gate, fault: Fault) -> web.Response:
    body = fault.body
    if body is None:
        body = gate.error(fault.status, phrase(fault.status), request)
    headers = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = retry_after_value(fault.retry_after)
    return json_error(body, fault.status, headers)


def refuse(request: web.Request, gate: Gate, failure: BearerFailure) -> web.Response:
    """The RFC 6750 answer to a request whose bearer token the API does not accept."""
    if failure.error is None:
        challenge = f'Bearer realm="{gate.realm}"'
    else:
        challenge = f'Bearer error="{failure.error}", error_description="{failure.description}"'
    body = gate.error(failure.status, failure.description, request)
    return json_error(body, failure.status, {"WWW-Authenticate": challenge})


def _route(
    request: web.Request, gate: Gate, routes: Mapping[str, Mapping[str, _H]]
) -> _H | web.Response:
    methods = routes.get(request.path)
    if methods is None:
        return json_error(gate.error(404, f"No route for {request.path}", request), 404)
    handler = methods.get(request.method)
    if handler is None:
        message = f"{request.method} is not allowed on {request.path}"
        allow = {"Allow": ", ".join(methods)}
        return json_error(gate.error(405, message, request), 405, allow)
    return handler


async def _through(
    request: web.Request,
    gate: Gate,
    state: SandboxState,
    entry: LogEntry,
    answer: Callable[[], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """Apply latency and faults, then ``answer``; record the status sent in ``entry``."""
    try:
        delay = state.latency.get(gate.target)
        if delay:
            await asyncio.sleep(delay)
        fault = state.faults.take(gate.target)
        if fault is None:
            response = await answer()
        elif fault.status == 0:
            entry["status"] = 0
            return _hang_up(request)
        else:
            response = _fault_response(request, gate, fault)
    except web.HTTPException as exc:
        entry["status"] = exc.status
        raise
    except Exception:
        entry["status"] = 500
        raise
    entry["status"] = response.status
    return response


def token_gate(
    gate: Gate, body_format: BodyFormat, routes: Mapping[str, Mapping[str, TokenHandler]]
) -> Handler:
    """The aiohttp handler of a token-endpoint prefix."""

    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        arrived = state.clock()
        seen = await read_token_request(request, body_format)
        grant_type = (
            seen.fields.get("grant_type") if seen.fields and body_format == "form" else None
        )
        entry: TokenEntry = {
            "seq": state.log.next_seq(),
            "time": arrived,
            "vendor": gate.vendor,
            "kind": "token",
            "method": request.method,
            "path": request.raw_path,
            "status": None,
            "grant_type": grant_type,
            "fields": dict(seen.fields) if seen.fields is not None else None,
            "basic_auth": list(seen.basic_auth) if seen.basic_auth else None,
            "content_type": seen.content_type,
            "headers": raw_headers(request),
        }
        state.log.add(entry)

        async def answer() -> web.StreamResponse:
            handler = _route(request, gate, routes)
            if isinstance(handler, web.Response):
                return handler
            return await handler(request, seen, state)

        return await _through(request, gate, state, entry, answer)

    return handle


def api_gate(
    gate: Gate,
    routes: Mapping[str, Mapping[str, ApiHandler]],
    throttle: Throttle | None = None,
) -> Handler:
    """The aiohttp handler of an API prefix: bearer check, optional throttle, then routes."""

    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        arrived = state.clock()
        bearer = state.tokens.check(
            request.headers.getall("Authorization", []), gate.vendor, arrived
        )
        entry: ApiEntry = {
            "seq": state.log.next_seq(),
            "time": arrived,
            "vendor": gate.vendor,
            "kind": "api",
            "method": request.method,
            "path": request.raw_path,
            "status": None,
            "token_jti": bearer.jti,
            "token_sub": bearer.sub,
            "token_expired": bearer.expired,
            "token_remaining": bearer.remaining,
            "authorization_count": bearer.authorization_count,
            "headers": raw_headers(request),
        }
        state.log.add(entry)

        async def answer() -> web.StreamResponse:
            token = bearer.outcome
            if isinstance(token, BearerFailure):
                return refuse(request, gate, token)
            if throttle is not None:
                throttled = throttle(request, token, state, arrived)
                if throttled is not None:
                    return throttled
            handler = _route(request, gate, routes)
            if isinstance(handler, web.Response):
                return handler
            return await handler(request, token, state)

        return await _through(request, gate, state, entry, answer)

    return handle
