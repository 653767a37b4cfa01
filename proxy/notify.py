"""systemd's readiness protocol (sd_notify): one datagram per state change to the Unix
socket named by ``NOTIFY_SOCKET``, so a ``Type=notify`` unit counts the proxy as started
only once it serves, and sees it stopping and reloading.

No dependency: the protocol is a ``KEY=VALUE`` line sent to a path (or, when the name
starts with "@", to that name in the abstract namespace). Without NOTIFY_SOCKET, nothing
is sent; a failed send is logged once and never stops the proxy.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("proxy.notify")

ENV = "NOTIFY_SOCKET"


class Notifier:
    """Sends sd_notify states to systemd (or whoever listens on NOTIFY_SOCKET)."""

    __slots__ = ("_address", "_failed")

    def __init__(self, address: str) -> None:
        # "@name": Linux's abstract namespace, where the name starts with a NUL byte.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._failed = False

    def send(self, *states: str) -> None:
        message = "\n".join(states).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("notify_failed", socket=self._address, error=exc.strerror)

    def ready(self) -> None:
        self.send("READY=1", "STATUS=serving", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        # Type=notify-reload (systemd 253) wants the monotonic time the reload began.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", "STATUS=reloading the config", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=draining")


def notifier(environ: Mapping[str, str]) -> Notifier | None:
    """The notifier NOTIFY_SOCKET asks for; None when it is not set."""
    address = environ.get(ENV, "")
    return Notifier(address) if address else None
