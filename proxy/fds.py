"""File descriptors: enough for what the connection limits let the proxy hold at once, or a
cap on connections that fits the limit.

A client connection holds one descriptor, and one more (the upstream socket) while a
request of it is being handled: at most ``max_in_flight`` at once (a spooled request body,
rarer, comes out of the reserve, and fails alone with a 500 if that runs dry). So the most
descriptors the limits can ever use is max_connections + min(max_in_flight,
max_connections) + RESERVE. A soft RLIMIT_NOFILE of 1,024 (the usual default, systemd's
included) would run out near 450 busy connections, long before the default cap of 10,000:
accept() would then fail with EMFILE and asyncio would stop accepting for a second at a
time, so clients would hang instead of getting the fast 503 the cap promises.
So the soft limit is raised as far as the hard limit allows (what a process may do for
itself), and only when even that cannot hold what the limits allow is the connection cap
lowered to what fits (and app.py says so: the limit binds).
"""

from __future__ import annotations

import resource
from typing import Final

PER_CONNECTION: Final = 2
# Listeners, log output, token fetches, spooled bodies, the event loop's own descriptors.
RESERVE: Final = 128


def descriptors(max_connections: int, max_in_flight: int | None = None) -> int:
    """The most descriptors the connection limits let the proxy hold at once."""
    upstream = max_connections if max_in_flight is None else min(max_in_flight, max_connections)
    return max_connections + upstream + RESERVE


def _fitting(soft: int, max_connections: int, max_in_flight: int | None) -> int:
    """The most connections whose descriptors fit in ``soft``."""
    room = soft - RESERVE
    both = room // PER_CONNECTION  # every connection with a request in flight
    if max_in_flight is not None and both > max_in_flight:
        both = room - max_in_flight  # past max_in_flight, a connection needs one only
    return max(1, min(max_connections, both))


def connection_cap(max_connections: int, max_in_flight: int | None = None) -> tuple[int, int]:
    """Raise the soft descriptor limit toward what ``max_connections`` (with
    ``max_in_flight`` requests handled at once; None: one per connection) needs; return
    the connections that fit (``max_connections`` when all do) and the soft limit now set."""
    need = descriptors(max_connections, max_in_flight)
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
    return _fitting(soft, max_connections, max_in_flight), soft
