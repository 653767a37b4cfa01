"""Running one differential case: the same client bytes through nginx and through our proxy
(routes ``/s`` and ``/r``), each in front of its own instance of the same scripted upstream,
all three at once; then the properties each side saw, and where ours departs from nginx.

Properties compared, per request on the upstream side: the request line, the header fields
(less those a proxy sets itself), the framing, body bytes, trailers, whether it arrived
whole and whether the proxy abandoned it before its answer was written. On the client side:
interim and final statuses, header fields (less each proxy's own), body bytes, trailers,
whether each body looks whole, bytes that make no answer, a framing error, how the
connection ended (FIN, reset, still open) and whether it still carries a request. An error
page a proxy makes itself (our JSON, nginx's HTML) is compared by its status only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest

from .conftest import ProxyFactory
from .nginx_ref import TIMEOUT, ReferenceNginx, require_nginx
from .rawclient import ClientStep, ClientView, Response, talk
from .rawpeer import Answer, ScriptedUpstream

# Set by one proxy or the other on the way up: Host is the upstream's, framing is compared
# as "up.framing".
UP_OWN: Final = frozenset(
    {
        "host",
        "connection",
        "content-length",
        "transfer-encoding",
        "via",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
        "x-request-id",
    }
)
# On the way down: Date and Server are nginx's own (it hides the upstream's), Connection
# and Keep-Alive describe each proxy's own connection (compared as "client.end" and
# "client.usable"); the rest are ours.
DOWN_OWN: Final = frozenset(
    {"date", "server", "via", "x-request-id", "x-proxy-attempts", "connection", "keep-alive"}
)
OWN_ERROR: Final = b"<the proxy's own error page>"
CLIENT_DEADLINE: Final = TIMEOUT + 1.0  # past both proxies' read timeout
SETTLE: Final = 2.5  # for each upstream to finish (or see abandoned) its answers
HANG: Final = 15.0  # a case still running after this is a hang, and fails
# Per-request lists, compared only when both sides count as many requests (or answers):
# otherwise the count is the difference, and the lists are shown, not compared.
_PER_ITEM: Final = {"up.count": "up.", "client.count": "client."}
_NOT_PER_ITEM: Final = frozenset(
    {"client.stray", "client.error", "client.end", "client.usable", "up.count", "client.count"}
)
_UNSET: Final = object()


@dataclass(frozen=True)
class Differ:
    """An expected difference: ``prop`` differs from nginx's on ``routes`` (and, when
    ``ours`` is given, ours has exactly that value); ``why`` says why ours is better."""

    prop: str
    why: str
    ours: object = _UNSET
    routes: tuple[str, ...] = ("s", "r")


@dataclass(frozen=True)
class Case:
    """One client script and the upstream's script of answers."""

    name: str
    send: tuple[ClientStep, ...]
    answers: tuple[Answer, ...]
    differ: tuple[Differ, ...] = field(default=())

    @property
    def methods(self) -> list[str]:
        return request_methods(b"".join(s for s in self.send if isinstance(s, bytes)))


def request_methods(sent: bytes) -> list[str]:
    """The methods of the requests in a client byte stream, in order."""
    methods = []
    pos = 0
    while (cut := sent.find(b"\r\n\r\n", pos)) >= 0:
        line, *fields = sent[pos:cut].split(b"\r\n")
        methods.append(line.split(b" ", 1)[0].decode("latin-1"))
        pos = cut + 4
        names = {k.strip().lower(): v.strip() for k, _, v in (f.partition(b":") for f in fields)}
        if names.get(b"transfer-encoding") == b"chunked":
            while (eol := sent.find(b"\r\n", pos)) >= 0:
                size = int(sent[pos:eol].split(b";")[0], 16)
                pos = eol + 2 + size + 2 if size else eol + 2
                if not size:
                    while (eol := sent.find(b"\r\n", pos)) > pos:
                        pos = eol + 2
                    pos += 2
                    break
        else:
            pos += int(names.get(b"content-length", b"0"))
    return methods


def _own_error(response: Response) -> bool:
    if response.status < 500:
        return False
    ours = response.header("x-proxy-error") is not None
    nginx = response.body.startswith(b"<html>\r\n<head><title>%d " % response.status)
    return ours or nginx


def _fields(fields: list[tuple[str, str]], own: frozenset[str]) -> list[tuple[str, str]]:
    # By name, keeping the order of repeated fields: the only order with a meaning.
    return sorted(((k.lower(), v) for k, v in fields if k.lower() not in own), key=lambda f: f[0])


def upstream_view(up: ScriptedUpstream, prefix: str) -> dict[str, object]:
    seen = up.seen

    def target(raw: str) -> str:
        return "/@" + raw[len(prefix) :] if raw.startswith(prefix + "/") else raw

    return {
        "up.count": len(seen),
        "up.line": [f"{s.method} {target(s.target)} {s.version}" for s in seen],
        "up.headers": [_fields(s.headers, UP_OWN) for s in seen],
        "up.framing": [s.framing for s in seen],
        "up.body": [s.body for s in seen],
        "up.trailers": [s.trailers for s in seen],
        "up.complete": [s.complete for s in seen],
        "up.abandoned": [s.abandoned for s in seen],
    }


def client_view(view: ClientView) -> dict[str, object]:
    answers = view.parsed.responses
    own = [_own_error(r) for r in answers]
    return {
        "client.count": len(answers),
        "client.interim": [r.interim for r in answers],
        "client.status": [r.status for r in answers],
        "client.headers": [
            [] if o else _fields(r.headers, DOWN_OWN) for r, o in zip(answers, own, strict=True)
        ],
        "client.body": [OWN_ERROR if o else r.body for r, o in zip(answers, own, strict=True)],
        "client.trailers": [r.trailers for r in answers],
        "client.complete": [r.complete for r in answers],
        "client.stray": view.parsed.stray,
        "client.error": view.parsed.error,
        "client.end": view.end,
        "client.usable": view.usable,
    }


def differences(
    ref: dict[str, object], ours: dict[str, object]
) -> dict[str, tuple[object, object]]:
    """Properties whose values differ; per-item lists only where the counts agree."""
    skipped = {prefix for count, prefix in _PER_ITEM.items() if ref[count] != ours[count]}
    return {
        k: (ref[k], ours[k])
        for k in ref
        if ref[k] != ours[k] and (k in _NOT_PER_ITEM or not any(k.startswith(p) for p in skipped))
    }


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 240 else text[:240] + "..."


def judge(case: Case, route: str, ref: dict[str, object], ours: dict[str, object]) -> str | None:
    """None when ours departs from nginx exactly as the case expects, else a report."""
    diffs = differences(ref, ours)
    expected = {d.prop: d for d in case.differ if route in d.routes}
    wrong_value = {p for p, d in expected.items() if d.ours is not _UNSET and ours.get(p) != d.ours}
    if set(diffs) == set(expected) and not wrong_value:
        return None
    lines = [f"{case.name}: ours on /{route} against nginx"]
    for prop, (theirs, mine) in sorted(diffs.items()):
        tag = "expected  " if prop in expected else "UNEXPECTED"
        lines.append(f"  {tag} {prop}: nginx {_short(theirs)} | ours {_short(mine)}")
    for prop in sorted(set(expected) - set(diffs)):
        lines.append(f"  MISSING    {prop}: same as nginx, {_short(ref[prop])}")
    for prop in sorted(wrong_value):
        lines.append(f"  WRONG      {prop}: ours should be {_short(expected[prop].ours)}")
        lines.append(f"             (expected because {expected[prop].why})")
    for prop in sorted(set(ref) - set(diffs)):
        if ref[prop] != ours[prop]:
            lines.append(
                f"  (follows)  {prop}: nginx {_short(ref[prop])} | ours {_short(ours[prop])}"
            )
    return "\n".join(lines)


async def _run(
    port: int, prefix: str, up: ScriptedUpstream, case: Case, methods: Sequence[str]
) -> dict[str, object]:
    view = await talk(port, prefix, case.send, methods, CLIENT_DEADLINE)
    await up.settle(SETTLE)
    return {**client_view(view), **upstream_view(up, prefix)}


def ours_config(s_port: int, r_port: int) -> str:
    timeout = f"timeout = {{ connect = {TIMEOUT}, read = {TIMEOUT} }}"
    return (
        f'[[routes]]\nprefix = "/s"\nupstream = "http://127.0.0.1:{s_port}/s"\n'
        f"retry = {{ attempts = 1 }}\n{timeout}\n"
        f'[[routes]]\nprefix = "/r"\nupstream = "http://127.0.0.1:{r_port}/r"\n{timeout}\n'
    )


async def run_case(case: Case, make_proxy: ProxyFactory, directory: Path) -> None:
    """Run ``case`` through nginx, ``/s`` and ``/r`` at once; fail with a report of every
    unexpected difference (or expected one that did not happen)."""
    require_nginx()
    ups = {name: ScriptedUpstream(case.answers) for name in ("n", "s", "r")}
    nginx = ReferenceNginx(directory / "nginx")
    try:
        for up in ups.values():
            await up.start()
        nginx_port = await nginx.start(ups["n"].port)
        base = await make_proxy(ours_config(ups["s"].port, ups["r"].port))
        ours = int(base.rsplit(":", 1)[1])
        methods = case.methods
        try:
            async with asyncio.timeout(HANG):
                ref, on_s, on_r = await asyncio.gather(
                    _run(nginx_port, "/n", ups["n"], case, methods),
                    _run(ours, "/s", ups["s"], case, methods),
                    _run(ours, "/r", ups["r"], case, methods),
                )
        except TimeoutError:
            pytest.fail(f"{case.name}: still running after {HANG} s", pytrace=False)
    finally:
        nginx.stop()
        for up in ups.values():
            await up.close()
    reports = [judge(case, route, ref, view) for route, view in (("s", on_s), ("r", on_r))]
    problems = [r for r in reports if r is not None]
    if problems:
        said = [line for line in nginx.error_log().splitlines() if "[error]" in line]
        problems.extend(f"  nginx: {line.split(': ', 1)[-1]}" for line in said[-3:])
        pytest.fail("\n".join(problems), pytrace=False)
