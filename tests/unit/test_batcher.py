"""DynamicBatcher: ordering, batch bounds, wait bound, error isolation, back-pressure,
cancellation, shutdown. Uses plain functions instead of models, so it is fast."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from encoders.batcher import BatcherClosed, DynamicBatcher, QueueFull

T = TypeVar("T")


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(asyncio.wait_for(coro_fn(), timeout=20))


class Recorder:
    """Batch function that doubles ints and records every batch it sees."""

    def __init__(self, gate: threading.Event | None = None, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate
        self.fail_on = fail_on
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [x * 2 for x in items]

    @property
    def seen(self) -> list[int]:
        return [x for batch in self.batches for x in batch]


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_concurrent_submits_get_their_own_results_in_bounded_batches() -> None:
    fn = Recorder()
    sizes: list[int] = []
    batcher: DynamicBatcher[int, int] = DynamicBatcher(fn, 8, 20, 1000, name="t")
    batcher.on_batch = sizes.append

    async def main() -> list[int]:
        results = await asyncio.gather(*(batcher.submit(i) for i in range(50)))
        await batcher.stop()
        return results

    assert run(main) == [2 * i for i in range(50)]
    assert sorted(fn.seen) == list(range(50))
    assert all(1 <= len(b) <= 8 for b in fn.batches)
    assert sizes == [len(b) for b in fn.batches]
    # Submitted together, they must actually have been batched.
    assert len(fn.batches) < 50


def test_lone_request_runs_at_once_whatever_max_wait() -> None:
    fn = Recorder()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(fn, 32, 5000, 10)

    async def main() -> list[float]:
        batcher.start()
        elapsed = []
        for i in range(3):  # one after the other: never two at once
            start = time.monotonic()
            assert await batcher.submit(i) == 2 * i
            elapsed.append(time.monotonic() - start)
        await batcher.stop()
        return elapsed

    assert max(run(main)) < 1.0  # not the 5 s max_wait
    assert fn.batches == [[0], [1], [2]]


def test_requests_arriving_during_a_batch_form_the_next_one() -> None:
    gate = threading.Event()
    fn = Recorder(gate)
    batcher: DynamicBatcher[int, int] = DynamicBatcher(fn, 4, 5000, 10)

    async def main() -> float:
        first = asyncio.ensure_future(batcher.submit(0))
        await wait_until(fn.entered.is_set)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 5)]
        await wait_until(lambda: batcher.queue_depth == 4)
        start = time.monotonic()
        gate.set()
        await asyncio.gather(first, *rest)
        elapsed = time.monotonic() - start
        await batcher.stop()
        return elapsed

    assert run(main) < 2.0  # a full batch does not wait for max_wait
    assert fn.batches == [[0], [1, 2, 3, 4]]


def test_partial_batch_under_load_waits_at_most_max_wait() -> None:
    gate = threading.Event()
    fn = Recorder(gate)
    batcher: DynamicBatcher[int, int] = DynamicBatcher(fn, 8, 300, 10)

    async def main() -> float:
        first = asyncio.ensure_future(batcher.submit(0))
        await wait_until(fn.entered.is_set)
        arrived = time.monotonic()
        second = asyncio.ensure_future(batcher.submit(1))
        await wait_until(lambda: batcher.queue_depth == 1)
        gate.set()
        await first
        await second
        waited = time.monotonic() - arrived
        await batcher.stop()
        return waited

    waited = run(main)
    # It arrived under load, so it waited for company, but no longer than max_wait.
    assert 0.25 <= waited < 1.5, waited
    assert fn.batches == [[0], [1]]


def test_zero_wait_runs_at_once() -> None:
    batcher: DynamicBatcher[int, int] = DynamicBatcher(Recorder(), 32, 0, 10)

    async def main() -> int:
        result = await batcher.submit(1)
        await batcher.stop()
        return result

    assert run(main) == 2


def test_error_only_fails_the_bad_item() -> None:
    fn = Recorder(fail_on=3)
    batcher: DynamicBatcher[int, int] = DynamicBatcher(fn, 16, 50, 100)

    async def main() -> list[int | BaseException]:
        results = await asyncio.gather(
            *(batcher.submit(i) for i in range(6)), return_exceptions=True
        )
        await batcher.stop()
        return results

    results = run(main)
    assert [r for i, r in enumerate(results) if i != 3] == [0, 2, 4, 8, 10]
    assert isinstance(results[3], ValueError)
    assert "bad item 3" in str(results[3])
    # The whole batch first, then each item alone.
    assert fn.batches[0] == list(range(6))
    assert sorted(fn.batches[1:]) == [[i] for i in range(6)]


def test_wrong_result_count_is_an_error_for_the_caller() -> None:
    batcher: DynamicBatcher[int, int] = DynamicBatcher(lambda items: [], 4, 0, 10)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="returned 0 results"):
            await batcher.submit(1)
        await batcher.stop()

    run(main)


def test_queue_full_is_raised_at_once() -> None:
    gate = threading.Event()
    fn = Recorder(gate=gate)
    batcher: DynamicBatcher[int, int] = DynamicBatcher(fn, 1, 0, 2)

    async def main() -> list[int]:
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.to_thread(fn.entered.wait, 5)  # item 0 is running, queue empty
        waiting = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        await wait_until(lambda: batcher.queue_depth == 2)
        start = time.monotonic()
        with pytest.raises(QueueFull):
            await batcher.submit(3)
        assert time.monotonic() - start < 0.5
        gate.set()
        results = await asyncio.gather(first, *waiting)
        await batcher.stop()
        return results

    assert run(main) == [0, 2, 4]
    assert 3 not in fn.seen


def test_cancelled_request_is_not_run() -> None:
    gate = threading.Event()
    fn = Recorder(gate=gate)
    batcher: DynamicBatcher[int, int] = DynamicBatcher(fn, 1, 0, 10)

    async def main() -> None:
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.to_thread(fn.entered.wait, 5)
        doomed = asyncio.create_task(batcher.submit(1))
        kept = asyncio.create_task(batcher.submit(2))
        await wait_until(lambda: batcher.queue_depth == 2)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert batcher.queue_depth == 1  # the cancelled request left the queue at once
        # A deadline expiring is the same thing.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.submit(3), timeout=0.05)
        gate.set()
        assert await first == 0
        assert await kept == 4
        await batcher.stop()

    run(main)
    assert fn.seen == [0, 2]


def test_stop_drains_then_refuses() -> None:
    gate = threading.Event()
    fn = Recorder(gate=gate)
    batcher: DynamicBatcher[int, int] = DynamicBatcher(fn, 2, 1000, 10)

    async def main() -> None:
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        await wait_until(lambda: fn.entered.is_set())
        stopping = asyncio.create_task(batcher.stop())
        gate.set()
        assert await asyncio.gather(*tasks) == [0, 2, 4]
        await stopping
        assert not batcher.running
        with pytest.raises(BatcherClosed):
            await batcher.submit(9)

    run(main)


def test_stop_without_drain_fails_waiting_requests() -> None:
    gate = threading.Event()
    fn = Recorder(gate=gate)
    batcher: DynamicBatcher[int, int] = DynamicBatcher(fn, 1, 0, 10)

    async def main() -> None:
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.to_thread(fn.entered.wait, 5)
        waiting = asyncio.create_task(batcher.submit(1))
        await wait_until(lambda: batcher.queue_depth == 1)
        stopping = asyncio.create_task(batcher.stop(drain=False))
        with pytest.raises(BatcherClosed):
            await waiting
        gate.set()
        assert await first == 0  # the batch already running still completes
        await stopping

    run(main)
    assert fn.seen == [0]


def test_broken_metrics_hook_does_not_break_batches() -> None:
    batcher: DynamicBatcher[int, int] = DynamicBatcher(Recorder(), 4, 0, 10)

    def hook(size: int) -> None:
        raise RuntimeError("metrics down")

    batcher.on_batch = hook

    async def main() -> int:
        result = await batcher.submit(5)
        await batcher.stop()
        return result

    assert run(main) == 10


def test_submit_from_several_event_loops() -> None:
    fn = Recorder()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(fn, 8, 10, 100)
    results: dict[int, list[int]] = {}

    def client(offset: int) -> None:
        async def main() -> list[int]:
            return list(await asyncio.gather(*(batcher.submit(offset + i) for i in range(10))))

        results[offset] = asyncio.run(main())

    threads = [threading.Thread(target=client, args=(k * 100,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    batcher.close()
    for k in range(3):
        assert results[k * 100] == [2 * (k * 100 + i) for i in range(10)]


@pytest.mark.parametrize(("size", "wait", "queue"), [(0, 1, 1), (1, -1, 1), (1, 1, 0)])
def test_invalid_settings(size: int, wait: float, queue: int) -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), size, wait, queue)
