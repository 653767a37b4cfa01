"""argparse types shared by the proxy's and the sandbox's command lines: a bad value is
refused by the parser (exit 2, naming the option) before anything starts."""

from __future__ import annotations

import argparse

from .authority import listen_host_problem


def listen_host(text: str) -> str:
    """``--host``: an IP address or host name, as ``server.host`` must be."""
    problem = listen_host_problem(text, "--port")
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text
