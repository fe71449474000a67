"""Lower CPU priority for heavy work (photo decoding, region proposals, photo encoding), so
that on a busy CPU the cheap requests (health checks, text searches, reads) are scheduled
first instead of sharing the cores evenly with a few expensive ones.

Linux schedules threads, and each has its own nice value: `lower_this_thread` raises the
calling thread's, and threads it starts later (e.g. ONNX Runtime's pool, created with its
session) inherit it. Elsewhere these are no-ops.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["HEAVY_NICE", "lower_this_thread", "run_heavy", "set_heavy_nice"]

P = ParamSpec("P")
T = TypeVar("T")

# Nice value for heavy work (0..19; 0 = same priority as everything else).
HEAVY_NICE = 10

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def set_heavy_nice(nice: int) -> None:
    """Set before the first heavy call and before models load (the composition root)."""
    global HEAVY_NICE
    HEAVY_NICE = max(0, min(19, nice))


def lower_this_thread(nice: int | None = None) -> None:
    """Give the calling thread at least `nice` (default HEAVY_NICE)."""
    nice = HEAVY_NICE if nice is None else nice
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    with contextlib.suppress(OSError):
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)


def _heavy_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1),
                                       thread_name_prefix="heavy",
                                       initializer=lower_this_thread)
        return _pool


async def run_heavy(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`asyncio.to_thread` for CPU-heavy request work: on a low-priority pool, with the
    caller's context variables (as to_thread does)."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await loop.run_in_executor(_heavy_pool(), call)
