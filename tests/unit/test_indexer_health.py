"""IndexerHealth: stuck only after `stall_s` without progress, whatever the reason; back to
healthy on the next pass that indexes something or finds nothing to do."""

from __future__ import annotations

from backend.domain.indexer_health import IndexerHealth
from backend.domain.indexing import DrainStats


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_idle_and_progressing_indexer_is_healthy() -> None:
    clock = Clock()
    health = IndexerHealth(stall_s=30, clock=clock)
    for _ in range(10):
        clock.now += 20
        health.passed(DrainStats(rows=0))  # nothing pending
    assert health.stuck() is None
    for _ in range(10):
        clock.now += 20
        health.passed(DrainStats(rows=64, done=3))  # slow, but moving
    assert health.stuck() is None


def test_passes_that_verify_nothing_or_never_return_are_stuck() -> None:
    clock = Clock()
    health = IndexerHealth(stall_s=30, clock=clock)
    clock.now += 29
    health.passed(DrainStats(rows=5, done=0))
    assert health.stuck() is None
    clock.now += 2
    reason = health.stuck()
    assert reason is not None and "31 s" in reason
    assert health.seconds_since_progress() == 31
    health.passed(DrainStats(rows=5, done=1))
    assert health.stuck() is None
    clock.now += 31  # a pass that hangs: no call at all
    assert health.stuck() is not None


def test_a_dead_loop_is_stuck_until_a_pass_succeeds() -> None:
    clock = Clock()
    health = IndexerHealth(stall_s=30, clock=clock)
    health.died("the indexer loop stopped")
    assert health.stuck() == "the indexer loop stopped"
    health.passed(DrainStats(rows=2, done=0))
    assert health.stuck() == "the indexer loop stopped"
    health.passed(DrainStats(rows=0))
    assert health.stuck() is None
