"""Heavy work runs at a lower CPU priority than request handling (Linux per-thread nice)."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading

import pytest

from encoders import priority

needs_nice = pytest.mark.skipif(not hasattr(os, "getpriority"),
                                reason="per-thread nice needs a POSIX os.getpriority")


def _my_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@needs_nice
def test_heavy_work_runs_niced_and_the_caller_does_not() -> None:
    before = _my_nice()
    inside = asyncio.run(priority.run_heavy(_my_nice))
    assert inside >= priority.HEAVY_NICE > before or before >= priority.HEAVY_NICE
    assert _my_nice() == before


@needs_nice
def test_threads_started_from_a_lowered_thread_inherit_its_priority() -> None:
    seen: list[int] = []

    def lowered() -> None:
        priority.lower_this_thread(7)
        child = threading.Thread(target=lambda: seen.append(_my_nice()))
        child.start()
        child.join()

    thread = threading.Thread(target=lowered)
    thread.start()
    thread.join()
    assert seen and seen[0] >= 7


def test_context_variables_reach_heavy_work() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="-")

    async def call() -> str:
        var.set("merchant-a")
        return await priority.run_heavy(var.get)

    assert asyncio.run(call()) == "merchant-a"
