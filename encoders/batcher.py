"""Dynamic batching: many concurrent single requests -> few batched model calls.

A request that finds the batch thread idle runs at once, alone: a lone query never waits
for company. Requests that arrive while a batch runs queue up and form the next batch, which
closes when `max_batch_size` of them are waiting or `max_wait_ms` has passed since the
oldest arrived (usually already true by the time the running batch ends), so batches form
only under load. The batch function runs in ONE dedicated thread, so inference
never blocks an event loop and the model sees one batch at a time. Each request has its own
asyncio future on the loop that submitted it; results are handed back with
`call_soon_threadsafe`, so several tasks (or even several loops) can submit at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from encoders.priority import lower_this_thread

__all__ = ["BatcherClosed", "DynamicBatcher", "QueueFull"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(Exception):
    """Too many requests are already waiting: shed load now instead of queueing forever."""


class BatcherClosed(RuntimeError):
    """The batcher has been stopped and takes no more requests."""


@dataclass(eq=False)
class _Request(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)
    # A batch was running when it arrived: it may wait (bounded) for others to join it.
    under_load: bool = False


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    # Runs on the future's loop. The caller may have been cancelled meanwhile.
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class DynamicBatcher(Generic[T, R]):
    """`await submit(item)` -> fn([..., item, ...])[its index], batched with its neighbours."""

    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        name: str = "encoder",
        low_priority: bool = False,
    ) -> None:
        """`low_priority`: the batch thread runs at encoders.priority.HEAVY_NICE."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.max_queue = max_queue
        self.name = name
        self.low_priority = low_priority
        # Called with the size of every call to fn (metrics); from the batch thread.
        self.on_batch: Callable[[int], None] | None = None
        self._max_wait_s = max_wait_ms / 1000.0
        self._queue: deque[_Request[T, R]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._drain = True
        self._busy = False  # the batch thread is running a batch (guarded by _cond)

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (not counting the batch being run)."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the batch thread (idempotent; `submit` also starts it on first use)."""
        with self._cond:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._closing:
            raise BatcherClosed(f"{self.name} batcher is stopped")
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name=f"{self.name}-batcher", daemon=True
            )
            self._thread.start()

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result (or for the exception fn raised for it).

        Raises QueueFull at once when `max_queue` requests are already waiting. If the
        calling task is cancelled (e.g. its deadline passed), the item is dropped before
        its batch runs.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        request: _Request[T, R] = _Request(item, future, loop)
        with self._cond:
            request.under_load = self._busy or bool(self._queue)
            if len(self._queue) >= self.max_queue:
                raise QueueFull(
                    f"{self.name} is overloaded: {len(self._queue)} requests already waiting"
                )
            self._start_locked()
            self._queue.append(request)
            # The batch thread only needs waking to start a timer or to close a full batch.
            if len(self._queue) == 1 or len(self._queue) >= self.max_batch_size:
                self._cond.notify()
        try:
            return await future
        except asyncio.CancelledError:
            self._discard(request)
            raise

    def _discard(self, request: _Request[T, R]) -> None:
        # ValueError: already taken into a batch; it is skipped or its result ignored.
        with self._cond, contextlib.suppress(ValueError):
            self._queue.remove(request)

    def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests. With `drain`, the waiting requests still run; otherwise
        they fail with BatcherClosed. Blocks until the batch thread has exited."""
        with self._cond:
            self._closing = True
            self._drain = drain
            dropped: list[_Request[T, R]] = []
            if not drain:
                dropped = list(self._queue)
                self._queue.clear()
            self._cond.notify_all()
            thread = self._thread
        for request in dropped:
            self._deliver(request, None, BatcherClosed(f"{self.name} batcher is stopped"))
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    async def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """`close` without blocking the event loop."""
        await asyncio.to_thread(self.close, drain=drain, timeout=timeout)

    # -- batch thread --------------------------------------------------------------------

    def _run(self) -> None:
        if self.low_priority:
            lower_this_thread()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._process(batch)
            except BaseException as exc:  # never leave callers waiting forever
                for request in batch:
                    self._deliver(request, None, exc)
                if not isinstance(exc, Exception):
                    raise
            finally:
                with self._cond:
                    self._busy = False

    def _next_batch(self) -> list[_Request[T, R]] | None:
        with self._cond:
            while True:
                if not self._queue:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                now = time.monotonic()
                oldest = self._queue[0]
                deadline = oldest.enqueued + self._max_wait_s
                if (not oldest.under_load or len(self._queue) >= self.max_batch_size
                        or now >= deadline or self._closing):
                    n = min(len(self._queue), self.max_batch_size)
                    self._busy = True
                    return [self._queue.popleft() for _ in range(n)]
                self._cond.wait(deadline - now)

    def _process(self, batch: list[_Request[T, R]]) -> None:
        live = [r for r in batch if not r.future.cancelled()]
        if not live:
            return
        try:
            results = self._call([r.item for r in live])
        except Exception as exc:
            if len(live) == 1:
                self._deliver(live[0], None, exc)
                return
            # One bad item (an odd image, say) must not fail its neighbours: run each
            # alone so only its own caller sees the error.
            log.warning(
                "%s: batch of %d failed (%s: %s); retrying items one by one",
                self.name,
                len(live),
                type(exc).__name__,
                exc,
            )
            for request in live:
                if request.future.cancelled():
                    continue
                try:
                    self._deliver(request, self._call([request.item])[0], None)
                except Exception as item_exc:
                    self._deliver(request, None, item_exc)
            return
        for request, result in zip(live, results, strict=True):
            self._deliver(request, result, None)

    def _call(self, items: list[T]) -> list[R]:
        if self.on_batch is not None:
            try:
                self.on_batch(len(items))
            except Exception:
                log.exception("%s: on_batch hook failed", self.name)
        try:
            results = self.fn(items)
        finally:
            # Idle before the results go out: a caller that submits again as soon as it
            # has its answer finds the thread free and is not held back as "under load".
            with self._cond:
                self._busy = False
        if len(results) != len(items):
            raise RuntimeError(
                f"{self.name}: batch function returned {len(results)} results "
                f"for {len(items)} items"
            )
        return results

    @staticmethod
    def _deliver(request: _Request[T, R], result: R | None, error: BaseException | None) -> None:
        # RuntimeError: the caller's event loop is closed, nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            request.loop.call_soon_threadsafe(_settle, request.future, result, error)

    def __repr__(self) -> str:
        return (
            f"DynamicBatcher({self.name!r}, max_batch_size={self.max_batch_size}, "
            f"max_wait_ms={self.max_wait_ms}, queue_depth={self.queue_depth})"
        )
