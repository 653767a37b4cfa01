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


def test_a_limit_beyond_what_setrlimit_takes_settles_for_the_most_it_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With an unlimited hard limit, a max_connections whose need passes a C long (setrlimit
    raises OverflowError) still starts, on the largest limit the call takes."""
    state = {"soft": 256}
    largest = 2**63 - 1

    def getrlimit(_: int) -> tuple[int, int]:
        return state["soft"], resource.RLIM_INFINITY

    def setrlimit(_: int, limits: tuple[int, int]) -> None:
        if limits[0] > largest:
            raise OverflowError("Python int too large to convert to C long")
        state["soft"] = limits[0]

    monkeypatch.setattr(resource, "getrlimit", getrlimit)
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert connection_cap(2**62) == ((largest - RESERVE) // 2, largest)
