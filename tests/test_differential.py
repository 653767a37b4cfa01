"""Differential suite: the same bytes through nginx and through our proxy, in front of the
same scripted raw upstream (tests/differential.py runs a case and compares). Every case
either agrees with nginx on every compared property, or names each difference with the
reason ours is the better behaviour (and, where it is one value, what ours must be).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

import pytest

from .conftest import ProxyFactory
from .differential import Case, Differ, run_case
from .rawclient import ABORT, CLOSE, SHUT, WaitFor
from .rawpeer import FIN, RST, Answer, Step

# -- building requests and answers ------------------------------------------------------


def req(
    method: bytes = b"GET",
    path: bytes = b"/x",
    *fields: bytes,
    body: bytes = b"",
    v: bytes = b"1.1",
) -> bytes:
    """A request for ``/@`` + path (``/@`` becomes the route prefix); a body gets its
    Content-Length unless ``fields`` frame it; HTTP/1.1 requests get a Host."""
    lines = [method + b" /@" + path + b" HTTP/" + v + b"\r\n"]
    if v == b"1.1":
        lines.append(b"Host: t\r\n")
    lines.extend(f + b"\r\n" for f in fields)
    framed = any(f.lower().startswith((b"content-length:", b"transfer-encoding:")) for f in fields)
    if body and not framed:
        lines.append(b"Content-Length: %d\r\n" % len(body))
    return b"".join(lines) + b"\r\n" + body


def chunks(*parts: bytes, ext: bytes = b"", trailer: bytes = b"") -> bytes:
    """A chunked body of ``parts`` (each size line ending in ``ext``), then ``trailer``."""
    out = b"".join(b"%x%b\r\n%b\r\n" % (len(p), ext, p) for p in parts)
    return out + b"0\r\n" + trailer + b"\r\n"


def chunked_req(*parts: bytes, ext: bytes = b"", trailer: bytes = b"") -> bytes:
    body = chunks(*parts, ext=ext, trailer=trailer)
    return req(b"POST", b"/x", b"Transfer-Encoding: chunked", body=body)


def head(status: bytes = b"200 OK", *fields: bytes) -> bytes:
    return b"HTTP/1.1 " + status + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


def ok(body: bytes = b"hello", *fields: bytes) -> bytes:
    return head(b"200 OK", *fields, b"Content-Length: %d" % len(body)) + body


CHUNKED_HEAD: Final = head(b"200 OK", b"Transfer-Encoding: chunked")


def chunked(*parts: bytes, ext: bytes = b"", trailer: bytes = b"") -> bytes:
    return CHUNKED_HEAD + chunks(*parts, ext=ext, trailer=trailer)


def answer(*steps: Step, at: Literal["head", "end"] = "end") -> Answer:
    return Answer(steps, at)


GET: Final = req()
OK: Final = answer(ok())
EXPECT: Final = b"Expect: 100-continue"
# A streaming answer 0.6 s long, and one that comes after the client has gone.
STREAM: Final = answer(CHUNKED_HEAD, b"5\r\nfirst\r\n", 0.3, b"6\r\nsecond\r\n", 0.3, b"0\r\n\r\n")
SLOW: Final = answer(1.0, ok())
ODD: Final = {
    "trailing_spaces": b"X-Odd: value   ",
    "obs_text": b"X-Odd: caf\xe9 \x80\xff",
    "invalid_utf8": b"X-Odd: \xc3\x28 \xff\xfe",
    "leading_whitespace": b"X-Odd: \t  value",
}

# -- why ours differs where it does -------------------------------------------------------

CUT: Final = (
    "ours resets a cut answer (PITFALLS 34), an end no client takes for a whole body; "
    "nginx closes with a FIN"
)
CUT_UNFRAMED: Final = (
    "a reset is the only way to tell a client its close-delimited body was cut; nginx "
    "ends it with a FIN, as if whole"
)
ONE_XX: Final = (
    "nginx 1.22 relays the upstream's 1xx as its answer and the real answer as an unframed "
    "body, closing at its read timeout; ours drops 1xx and forwards the final answer"
)
ONE_XX_HTTP10: Final = (
    "RFC 9110 §15.2: no 1xx to an HTTP/1.0 client; nginx relays the upstream's 103 to it"
)
CONTINUE_NOT_NEEDED: Final = (
    "RFC 9110 §10.1.1: a server may omit 100 (Continue) once it has the content; ours sends "
    "it only when it waits for the body, nginx even when the body came with the head"
)
TRAILING_TAB: Final = "RFC 9110 §5.5: no trailing SP or HTAB in a value; nginx 1.22 strips SP only"
STREAMED_BODY: Final = (
    "a route that never replays streams Content-Length bodies (README: Bodies): the "
    "upstream starts at once and nothing is held, and a cut body never completes there"
)
TWO_LENGTHS: Final = (
    "README: two Content-Lengths are a 502 (RFC 9110 §8.6 allows refusing them); nginx 1.22 "
    "takes the answer"
)
CONFLICTING_LENGTHS: Final = (
    "two different lengths leave the body's end unknown (RFC 9112 §6.3): ours answers 502; "
    "nginx 1.22 believes the last one"
)
LENGTH_LIST: Final = (
    "a list is no valid Content-Length (RFC 9112 §6.3): ours answers 502 at once; nginx "
    "ignores it, streams a close-delimited body and cuts it at its read timeout"
)
LENGTH_AND_CHUNKED: Final = (
    "Content-Length with chunked may be response splitting (RFC 9112 §6.3: ought to be an "
    "error): ours answers 502; nginx 1.22 forwards it as chunked"
)


def cut(*, unframed: bool = False) -> tuple[Differ, ...]:
    return (Differ("client.end", CUT_UNFRAMED if unframed else CUT, ours="rst"),)


def one_xx() -> tuple[Differ, ...]:
    return (
        Differ("client.interim", ONE_XX, ours=[[]]),
        Differ("client.end", ONE_XX, ours="open"),
        Differ("client.usable", ONE_XX, ours=True),
    )


def refused(why: str, *also: str) -> tuple[Differ, ...]:
    """Ours answers 502 where nginx forwards the upstream's answer."""
    return (
        Differ("client.status", why, ours=[502]),
        Differ("client.headers", why),
        Differ("client.body", why),
        *(Differ(prop, why) for prop in also),
    )


# -- the corpus ---------------------------------------------------------------------------

CASES: Final = [
    # Framing of requests
    Case("get_length_answer", (GET,), (OK,)),
    Case("post_length_body", (req(b"POST", body=b"hello world"),), (OK,)),
    Case("post_length_zero", (req(b"POST", b"/x", b"Content-Length: 0"),), (OK,)),
    Case(
        "post_body_in_pieces",
        (req(b"POST", b"/x", b"Content-Length: 11"), 0.05, b"hello", 0.05, b" world"),
        (OK,),
    ),
    Case("post_300k_length", (req(b"POST", body=b"b" * 300 * 1024),), (OK,)),
    Case("post_chunked_body", (chunked_req(b"hello ", b"world"),), (OK,)),
    Case("post_chunk_extensions", (chunked_req(b"hello", b"world", ext=b";name=value"),), (OK,)),
    Case("post_many_tiny_chunks", (chunked_req(*(bytes([c]) for c in b"abcdefghij" * 30)),), (OK,)),
    Case("post_empty_chunked", (chunked_req(),), (OK,)),
    Case("post_300k_chunked", (chunked_req(*[b"c" * 61440] * 5),), (OK,)),
    Case("post_request_trailers", (chunked_req(b"hello", trailer=b"X-Check: 1\r\n"),), (OK,)),
    Case("http10_get", (req(v=b"1.0"),), (OK,)),
    Case("http10_keep_alive", (req(b"GET", b"/x", b"Connection: keep-alive", v=b"1.0"),), (OK,)),
    Case("http10_post", (req(b"POST", body=b"hello", v=b"1.0"),), (OK,)),
    # Framing of answers
    Case("answer_chunked", (GET,), (answer(chunked(b"hel", b"lo")),)),
    Case("answer_chunk_extensions", (GET,), (answer(chunked(b"hello", b"world", ext=b";a=b")),)),
    Case(
        "answer_many_tiny_chunks",
        (GET,),
        (answer(CHUNKED_HEAD, *(b"1\r\n%c\r\n" % c for c in b"0123456789" * 10), b"0\r\n\r\n"),),
    ),
    Case("answer_close_delimited", (GET,), (answer(head(), b"hello", b" world", FIN),)),
    Case(
        "answer_written_in_pieces",
        (GET,),
        (
            answer(
                b"HTTP/1.1 200 OK\r\nContent-Le", 0.05, b"ngth: 11\r\n\r\nhel", 0.05, b"lo world"
            ),
        ),
    ),
    Case("answer_length_zero", (GET,), (answer(ok(b"")),)),
    Case("answer_300k_chunked", (GET,), (answer(chunked(*[b"z" * 65536] * 5)),)),
    Case("http10_client_chunked_answer", (req(v=b"1.0"),), (answer(chunked(b"hel", b"lo")),)),
    Case(
        "http10_client_close_delimited_answer", (req(v=b"1.0"),), (answer(head(), b"hello", FIN),)
    ),
    # Pipelining
    Case("pipeline_three_gets", (GET + GET + GET,), (OK, answer(ok(b"two")), answer(ok(b"three")))),
    Case(
        "pipeline_posts_with_bodies",
        (req(b"POST", body=b"one") + req(b"POST", body=b"two!") + GET,),
        (OK, answer(ok(b"two")), answer(ok(b"three"))),
    ),
    Case(
        "pipeline_chunked_then_length",
        (chunked_req(b"one") + req(b"POST", body=b"two"),),
        (OK, answer(ok(b"two"))),
    ),
    Case(
        "pipeline_head_then_get",
        (req(b"HEAD") + GET,),
        (answer(head(b"200 OK", b"Content-Length: 5")), answer(ok(b"after"))),
    ),
    Case("pipeline_behind_slow_stream", (GET + GET,), (STREAM, answer(ok(b"second")))),
    # Interim answers
    Case(
        "expect_100_waits_for_it",
        (req(b"POST", b"/x", EXPECT, b"Content-Length: 5"), WaitFor(b"100 Continue"), b"hello"),
        (OK,),
    ),
    Case(
        "expect_100_body_at_once",
        (req(b"POST", b"/x", EXPECT, body=b"hello"),),
        (OK,),
        (Differ("client.interim", CONTINUE_NOT_NEEDED, ours=[[]]),),
    ),
    Case(
        "expect_100_pipelined_behind_streaming_answer",
        (GET + req(b"POST", b"/x", EXPECT, body=b"hello"),),
        (STREAM, answer(ok(b"posted"))),
        (Differ("client.interim", CONTINUE_NOT_NEEDED, ours=[[], []]),),
    ),
    Case(
        "expect_100_sent_during_streaming_answer",
        (GET, WaitFor(b"first"), req(b"POST", b"/x", EXPECT, body=b"hello")),
        (STREAM, answer(ok(b"posted"))),
        (Differ("client.interim", CONTINUE_NOT_NEEDED, ours=[[], []]),),
    ),
    Case(
        "expect_100_pipelined_body_withheld",
        (
            GET + req(b"POST", b"/x", EXPECT, b"Content-Length: 5"),
            WaitFor(b"100 Continue"),
            b"hello",
        ),
        (STREAM, answer(ok(b"posted"))),
    ),
    Case("upstream_100_then_final", (GET,), (answer(head(b"100 Continue"), ok()),), one_xx()),
    Case(
        "upstream_103_then_final",
        (GET,),
        (answer(head(b"103 Early Hints", b"Link: </a.css>; rel=preload"), ok()),),
        one_xx(),
    ),
    Case(
        "upstream_100_103_then_final",
        (GET,),
        (answer(head(b"100 Continue"), 0.05, head(b"103 Early Hints"), 0.05, ok()),),
        one_xx(),
    ),
    Case(
        "upstream_100_at_head_of_post",
        (req(b"POST", body=b"hello"),),
        (answer(head(b"100 Continue"), 0.1, ok(), at="head"),),
        one_xx(),
    ),
    Case(
        "http10_client_upstream_103",
        (req(v=b"1.0"),),
        (answer(head(b"103 Early Hints"), ok()),),
        (Differ("client.interim", ONE_XX_HTTP10, ours=[[]]),),
    ),
    # Trailers from the upstream
    Case("answer_chunked_trailers", (GET,), (answer(chunked(b"hello", trailer=b"X-Sum: 5\r\n")),)),
    Case("answer_trailers_only", (GET,), (answer(chunked(trailer=b"X-Sum: 0\r\n")),)),
    # The upstream closes or resets early
    Case("upstream_fin_before_head", (GET,), (answer(FIN),)),
    Case("upstream_rst_before_head", (GET,), (answer(RST),)),
    Case("upstream_fin_mid_head", (GET,), (answer(b"HTTP/1.1 200 OK\r\nContent-Le", FIN),)),
    Case("upstream_rst_mid_head", (GET,), (answer(b"HTTP/1.1 200 OK\r\nContent-Le", RST),)),
    Case(
        "upstream_fin_mid_length_body",
        (GET,),
        (answer(head(b"200 OK", b"Content-Length: 10"), b"hello", 0.05, FIN),),
        cut(),
    ),
    Case(
        "upstream_rst_mid_length_body",
        (GET,),
        (answer(head(b"200 OK", b"Content-Length: 10"), b"hello", 0.05, RST),),
        cut(),
    ),
    Case(
        "upstream_fin_mid_chunked_body",
        (GET,),
        (answer(CHUNKED_HEAD, b"5\r\nhello\r\n", 0.05, FIN),),
        cut(),
    ),
    Case(
        "upstream_rst_mid_chunked_body",
        (GET,),
        (answer(CHUNKED_HEAD, b"5\r\nhello\r\n", 0.05, RST),),
        cut(),
    ),
    Case(
        "upstream_rst_mid_close_delimited_body",
        (GET,),
        (answer(head(), b"hello", 0.05, RST),),
        cut(),
    ),
    Case(
        "http10_client_upstream_rst_mid_close_delimited_body",
        (req(v=b"1.0"),),
        (answer(head(), b"hello", 0.05, RST),),
        (*cut(unframed=True), Differ("client.complete", CUT_UNFRAMED, ours=[False])),
    ),
    Case(
        "upstream_silent_mid_body",
        (GET,),
        (answer(head(b"200 OK", b"Content-Length: 10"), b"hello", 3.0),),
        cut(),
    ),
    Case("upstream_silent_before_head", (GET,), (answer(3.0, ok()),)),
    Case("upstream_fin_after_answer", (GET,), (answer(ok(), FIN),)),
    Case(
        "upstream_connection_close_answer",
        (GET,),
        (answer(ok(b"hello", b"Connection: close"), FIN),),
    ),
    # The client closes or resets early
    Case("client_closes_before_answer", (GET, 0.2, CLOSE), (SLOW,)),
    Case("client_resets_before_answer", (GET, 0.2, ABORT), (SLOW,)),
    Case("client_half_closes_after_request", (GET, SHUT), (answer(0.3, ok()),)),
    Case(
        "client_closes_mid_length_body",
        (req(b"POST", b"/x", b"Content-Length: 10"), b"hello", 0.2, CLOSE),
        (SLOW,),
        (Differ("up.count", STREAMED_BODY, ours=1, routes=("s",)),),
    ),
    Case(
        "client_closes_mid_chunked_body",
        (req(b"POST", b"/x", b"Transfer-Encoding: chunked"), b"5\r\nhello\r\n", 0.2, CLOSE),
        (SLOW,),
    ),
    Case("client_closes_mid_answer", (GET, WaitFor(b"first"), CLOSE), (STREAM,)),
    # Odd header bytes, both ways
    *(Case(f"request_header_{k}", (req(b"GET", b"/x", v),), (OK,)) for k, v in ODD.items()),
    *(Case(f"answer_header_{k}", (GET,), (answer(ok(b"hello", v)),)) for k, v in ODD.items()),
    Case(
        "request_header_trailing_tab",
        (req(b"GET", b"/x", b"X-Odd: value\t"),),
        (OK,),
        (Differ("up.headers", TRAILING_TAB, ours=[[("x-odd", "value")]]),),
    ),
    Case(
        "answer_header_trailing_tab",
        (GET,),
        (answer(ok(b"hello", b"X-Odd: value\t")),),
        (
            Differ(
                "client.headers", TRAILING_TAB, ours=[[("content-length", "5"), ("x-odd", "value")]]
            ),
        ),
    ),
    # Bodies on bodyless answers
    Case("answer_204_with_body", (GET,), (answer(head(b"204 No Content") + b"hello"),)),
    Case(
        "answer_204_body_written_late", (GET,), (answer(head(b"204 No Content"), 0.05, b"hello"),)
    ),
    Case(
        "answer_304_with_length_and_body",
        (GET,),
        (answer(head(b"304 Not Modified", b"Content-Length: 5") + b"hello"),),
    ),
    Case("head_request", (req(b"HEAD"),), (answer(head(b"200 OK", b"Content-Length: 5")),)),
    Case("head_answer_with_body", (req(b"HEAD"),), (answer(ok()),)),
    Case("head_answer_chunked", (req(b"HEAD"),), (answer(CHUNKED_HEAD),)),
    # Conflicting framing from the upstream
    Case(
        "answer_duplicate_length",
        (GET,),
        (answer(head(b"200 OK", b"Content-Length: 5", b"Content-Length: 5") + b"hello"),),
        refused(TWO_LENGTHS),
    ),
    Case(
        "answer_conflicting_lengths",
        (GET,),
        (answer(head(b"200 OK", b"Content-Length: 5", b"Content-Length: 6") + b"hello!"),),
        refused(CONFLICTING_LENGTHS),
    ),
    Case(
        "answer_length_list",
        (GET,),
        (answer(head(b"200 OK", b"Content-Length: 5, 5") + b"hello"),),
        refused(LENGTH_LIST, "client.complete", "client.end", "client.usable"),
    ),
    Case(
        "answer_length_and_chunked",
        (GET,),
        (
            answer(
                head(b"200 OK", b"Content-Length: 5", b"Transfer-Encoding: chunked")
                + chunks(b"hello")
            ),
        ),
        refused(LENGTH_AND_CHUNKED),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_agrees_with_nginx(case: Case, make_proxy: ProxyFactory, tmp_path: Path) -> None:
    """Upstream and client see the same through ours as through nginx, but for the
    differences the case names."""
    await run_case(case, make_proxy, tmp_path)
