"""File descriptors: enough for ``server.max_connections``, or a cap that fits the limit.

A client connection holds two descriptors while its request is answered: its socket and
the upstream socket the request is on (a spooled request body, rarer, comes out of the
reserve, and fails alone with a 500 if that runs dry). A soft RLIMIT_NOFILE of 1,024 (the
usual default, systemd's included) would run out near 450 connections, long before the
default cap of 10,000: accept() would then fail with EMFILE and asyncio would stop
accepting for a second at a time, so clients would hang instead of getting the fast 503
the cap promises.
So the soft limit is raised as far as the hard limit allows (what a process may do for
itself), and when even that is too low the connection cap is lowered to what fits.
"""

from __future__ import annotations

import resource
from typing import Final

PER_CONNECTION: Final = 2
# Listeners, log output, token fetches, spooled bodies, the event loop's own descriptors.
RESERVE: Final = 128


def connection_cap(max_connections: int) -> tuple[int, int]:
    """Raise the soft descriptor limit toward what ``max_connections`` needs; return the
    connections that fit (``max_connections`` when all do) and the soft limit now set."""
    need = max_connections * PER_CONNECTION + RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_connections, soft
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    except (ValueError, OSError, OverflowError):
        # The kernel may take less than the hard limit says (macOS caps an "unlimited"
        # hard limit at OPEN_MAX), and setrlimit takes no more than a C long (a huge
        # max_connections under an unlimited hard limit): settle for the largest it takes.
        low, high = soft, target - 1
        while low < high:
            middle = (low + high + 1) // 2
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (middle, hard))
                low = middle
            except (ValueError, OSError, OverflowError):
                high = middle - 1
        soft = low
    if soft >= need:
        return max_connections, soft
    return max(1, (soft - RESERVE) // PER_CONNECTION), soft
