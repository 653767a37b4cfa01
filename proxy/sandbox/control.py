"""The sandbox's own endpoints under ``/-/sandbox/``: health, the request log, and the knobs.

    GET    /-/sandbox/health     {"status": "ok"}
    GET    /-/sandbox/log        {"entries": [...]}
    DELETE /-/sandbox/log        clear it
    GET    /-/sandbox/control    the current knobs
    POST   /-/sandbox/control    change knobs (all-or-nothing: any problem changes nothing)

A control request is checked in full before anything changes; problems come back together
as ``400 {"error": "invalid control request", "problems": [...]}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final, cast

from aiohttp import web

from .settings import LIFETIME_NAMES, TARGETS, VENDORS, Vendor
from .state import STATE, Fault

_KEYS: Final = (
    "token_lifetime",
    "inject",
    "latency",
    "revoke",
    "revoke_refresh",
    "clear_inject",
    "reset",
)
_FAULT_KEYS: Final = frozenset({"target", "status", "count", "retry_after", "body"})


@dataclass(slots=True)
class Changes:
    """A checked control request, applied in a fixed order: reset and clears come first."""

    reset: bool = False
    clear_inject: bool = False
    lifetimes: dict[str, float | None] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    revoke: list[Vendor] = field(default_factory=list)
    revoke_refresh: bool = False
    faults: list[Fault] = field(default_factory=list)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _flag(body: dict[str, Any], key: str, problems: list[str]) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        problems.append(f"{key} = {value!r}: must be true or false")
        return False
    return value


def _fault(index: int, item: object, problems: list[str]) -> Fault | None:
    where = f"inject[{index}]"
    if not isinstance(item, dict):
        problems.append(f"{where}: must be an object")
        return None
    before = len(problems)
    unknown = sorted(set(item) - _FAULT_KEYS)
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown}, allowed: {sorted(_FAULT_KEYS)}")
    target, status = item.get("target"), item.get("status")
    count, retry_after = item.get("count", 1), item.get("retry_after")
    if target not in TARGETS:
        problems.append(f"{where}.target = {target!r}: must be one of {list(TARGETS)}")
    if not (isinstance(status, int) and not isinstance(status, bool)) or not (
        status == 0 or 100 <= status <= 599
    ):
        problems.append(f"{where}.status = {status!r}: must be 0 (hang up) or 100-599")
    if not (isinstance(count, int) and not isinstance(count, bool)) or not (
        count >= 1 or count == -1
    ):
        problems.append(f"{where}.count = {count!r}: must be at least 1, or -1 for until cleared")
    if retry_after is not None and not (_number(retry_after) and retry_after >= 0):
        problems.append(f"{where}.retry_after = {retry_after!r}: must be seconds >= 0")
    if len(problems) > before:
        return None
    return Fault(str(target), cast(int, status), cast(int, count), retry_after, item.get("body"))


def parse_changes(body: object) -> Changes | list[str]:
    """The changes a control request asks for, or every problem it has."""
    if not isinstance(body, dict):
        return ["the body must be a JSON object"]
    problems: list[str] = []
    unknown = sorted(set(body) - set(_KEYS))
    if unknown:
        problems.append(f"unknown key(s) {unknown}, allowed: {list(_KEYS)}")
    changes = Changes(
        reset=_flag(body, "reset", problems),
        clear_inject=_flag(body, "clear_inject", problems),
        revoke_refresh=_flag(body, "revoke_refresh", problems),
    )
    lifetimes = body.get("token_lifetime", {})
    if not isinstance(lifetimes, dict):
        problems.append("token_lifetime: must be an object of name -> seconds")
        lifetimes = {}
    for name, seconds in lifetimes.items():
        if name not in LIFETIME_NAMES:
            problems.append(f"token_lifetime.{name}: unknown, allowed: {list(LIFETIME_NAMES)}")
        elif seconds is not None and not (_number(seconds) and seconds > 0):
            problems.append(f"token_lifetime.{name} = {seconds!r}: must be seconds > 0 or null")
        else:
            changes.lifetimes[name] = seconds
    latency = body.get("latency", {})
    if not isinstance(latency, dict):
        problems.append("latency: must be an object of target -> seconds")
        latency = {}
    for target, seconds in latency.items():
        if target not in TARGETS:
            problems.append(f"latency.{target}: unknown, allowed: {list(TARGETS)}")
        elif not (_number(seconds) and seconds >= 0):
            problems.append(f"latency.{target} = {seconds!r}: must be seconds >= 0")
        else:
            changes.latency[target] = float(seconds)
    revoke = body.get("revoke", [])
    if not isinstance(revoke, list):
        problems.append("revoke: must be a list of vendors")
        revoke = []
    for vendor in revoke:
        if vendor in VENDORS:
            changes.revoke.append(vendor)
        else:
            problems.append(f"revoke: {vendor!r} is not one of {list(VENDORS)}")
    inject = body.get("inject", [])
    if not isinstance(inject, list):
        problems.append("inject: must be a list of objects")
        inject = []
    for index, item in enumerate(inject):
        fault = _fault(index, item, problems)
        if fault is not None:
            changes.faults.append(fault)
    return problems or changes


async def _control(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.method == "GET":
        return web.json_response(state.knobs())
    try:
        body = await request.json()
    except ValueError:
        body = None
    changes = parse_changes(body)
    if isinstance(changes, list):
        return web.json_response(
            {"error": "invalid control request", "problems": changes}, status=400
        )
    if changes.reset:
        state.reset()
    if changes.clear_inject:
        state.faults.clear()
    defaults = state.settings.lifetimes()
    for name, seconds in changes.lifetimes.items():
        # null restores the construction value (for travelyzer: follow expiresIn again).
        if seconds is None:
            state.lifetimes.pop(name, None)
            if name in defaults:
                state.lifetimes[name] = defaults[name]
        else:
            state.lifetimes[name] = seconds
    for target, seconds in changes.latency.items():
        if seconds:
            state.latency[target] = seconds
        else:
            state.latency.pop(target, None)
    for vendor in changes.revoke:
        state.revoked[vendor] = state.revoked.get(vendor, 0) + state.tokens.revoke(vendor)
    if changes.revoke_refresh:
        revoked = state.refresh.revoke_all()
        state.revoked["travis_refresh"] = state.revoked.get("travis_refresh", 0) + revoked
    for fault in changes.faults:
        state.faults.add(fault)
    return web.json_response(state.knobs())


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _log(request: web.Request) -> web.Response:
    log = request.app[STATE].log
    if request.method == "DELETE":
        cleared = len(log)
        log.clear()
        return web.json_response({"cleared": cleared})
    return web.json_response({"entries": log.entries()})


def add_routes(router: web.UrlDispatcher) -> None:
    """Register the control endpoints on ``router``."""
    router.add_get("/-/sandbox/health", _health, allow_head=False)
    router.add_route("GET", "/-/sandbox/log", _log)
    router.add_route("DELETE", "/-/sandbox/log", _log)
    router.add_route("GET", "/-/sandbox/control", _control)
    router.add_route("POST", "/-/sandbox/control", _control)
