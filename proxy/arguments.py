"""argparse types shared by the proxy's and the sandbox's command lines: a bad value is
refused by the parser (exit 2, naming the option) before anything starts."""

from __future__ import annotations

import argparse

from .http.authority import listen_host_problem


def listen_host(text: str) -> str:
    """``--host``: an IP address or host name, as ``server.host`` must be."""
    problem = listen_host_problem(text, "--port")
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def port(text: str) -> int:
    """``--port``: a port number, 0 (any free port) to 65535."""
    number = _whole(text)
    if number is None or number > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return number


def workers(text: str) -> int:
    """``--workers``: a number of processes, at least 1."""
    number = _whole(text)
    if number is None or number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return number


def _whole(text: str) -> int | None:
    # ASCII digits only: int() would also take "-1", " 7", "1_000" and other scripts' digits.
    return int(text) if text.isascii() and text.isdigit() else None
