"""When a test runs past its timeout (pytest-timeout), print where each of its asyncio
tasks is waiting before the test fails.

The timeout interrupts the main thread, which for an asyncio test is the event loop asleep
in select(): that stack tells nothing. The await chain of each pending task (test, helper,
read, future) shows the hang. Registered as a plugin by conftest.py.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import signal
import traceback
from collections.abc import Generator
from types import FrameType
from typing import Any

import pytest


def _awaited(link: Any) -> Any:
    """What a coroutine, generator or async generator is waiting on, if one of those."""
    for name in ("cr_await", "gi_yieldfrom", "ag_await"):
        if (target := getattr(link, name, None)) is not None:
            return target
    # An async generator's __anext__() (a fixture's teardown) hides the generator, but
    # holds a reference to it.
    return next((g for g in gc.get_referents(link) if inspect.isasyncgen(g)), None)


def awaiting(task: asyncio.Task[Any]) -> str:
    """The task's await chain, outermost coroutine first, as traceback lines."""
    frames: list[tuple[FrameType, int]] = []
    link: Any = task.get_coro()
    while link is not None:
        for name in ("cr_frame", "gi_frame", "ag_frame"):
            if (frame := getattr(link, name, None)) is not None:
                frames.append((frame, frame.f_lineno))
        link = _awaited(link)
    return "".join(traceback.StackSummary.extract(frames).format())


def _print_tasks(config: pytest.Config) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # a plain test: the failure's own traceback is the stack
    terminal = config.get_terminal_writer()
    for task in asyncio.all_tasks(loop):
        terminal.sep("~", title=f"Awaiting in {task.get_name()}")
        terminal.write(awaiting(task))


@pytest.hookimpl(wrapper=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> Generator[None, object, object]:
    result = yield
    # The signal method has just set its SIGALRM handler (the thread method sets none):
    # print the tasks, then let it fail the test.
    fail = signal.getsignal(signal.SIGALRM)
    if callable(fail):

        def handler(signum: int, frame: FrameType | None) -> None:
            __tracebackhide__ = True
            _print_tasks(item.config)
            fail(signum, frame)

        signal.signal(signal.SIGALRM, handler)
    return result
