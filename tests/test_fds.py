"""The open-files limit the proxy sets itself (the real limit is exercised by the
subprocess tests in test_hardening.py; this covers a kernel this machine is not)."""

from __future__ import annotations

import resource

import pytest

from proxy.fds import RESERVE, connection_cap


def test_a_kernel_that_takes_less_than_the_hard_limit_still_gets_the_most_it_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """macOS reports an unlimited hard limit but refuses more than OPEN_MAX (10,240): the
    proxy settles for 10,240, not for the shell's 256."""
    state = {"soft": 256}

    def getrlimit(_: int) -> tuple[int, int]:
        return state["soft"], resource.RLIM_INFINITY

    def setrlimit(_: int, limits: tuple[int, int]) -> None:
        if limits[0] > 10240:
            raise ValueError("current limit exceeds maximum limit")
        state["soft"] = limits[0]

    monkeypatch.setattr(resource, "getrlimit", getrlimit)
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert connection_cap(10000) == ((10240 - RESERVE) // 2, 10240)
    assert state["soft"] == 10240
