"""The background index builder: builds after bulk writes once they pause (or have gone on
too long), never for a trickle, one build at a time, a failed build reported and retried
after more writes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from backend.domain.index_maintainer import IndexMaintainer
from backend.errors import BuildAborted


class FakeStore:
    def __init__(self, seconds: float = 0.0, fail: bool = False) -> None:
        self.builds: list[float] = []
        self.seconds = seconds
        self.fail = fail
        self.abort = False
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def build_index(self, collection: str) -> None:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.seconds)
            if self.fail:
                raise RuntimeError("disk full")
            if self.abort:
                raise BuildAborted("too many writes during the build")
            self.builds.append(time.monotonic())
        finally:
            with self._lock:
                self.running -= 1


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_builds_once_writes_pause_and_not_for_a_trickle() -> None:
    store = FakeStore()
    m = IndexMaintainer(store, "c", min_writes=100, quiet_s=0.2, max_delay_s=60)  # type: ignore[arg-type]
    try:
        m.written(40)
        m.written(40)
        time.sleep(0.5)
        assert store.builds == [] and m.state().pending_writes == 80  # too few: no build
        last = time.monotonic()
        m.written(40)
        assert wait_for(lambda: len(store.builds) == 1)
        assert store.builds[0] - last >= 0.19  # waited for the writes to pause
        state = m.state()
        assert state.builds == 1 and state.pending_writes == 0 and not state.building
        time.sleep(0.4)
        assert len(store.builds) == 1  # nothing new written: no second build
    finally:
        m.close()


def test_steady_writes_get_a_build_after_max_delay() -> None:
    store = FakeStore()
    m = IndexMaintainer(store, "c", min_writes=10, quiet_s=10, max_delay_s=0.3)  # type: ignore[arg-type]
    try:
        start = time.monotonic()
        while time.monotonic() - start < 1.0 and not store.builds:
            m.written(5)  # never quiet for 10 s
            time.sleep(0.02)
        assert store.builds, "no build although writes went on past max_delay_s"
        assert store.builds[0] - start < 0.9
    finally:
        m.close()


def test_one_build_at_a_time_and_writes_during_it_build_again() -> None:
    store = FakeStore(seconds=0.3)
    m = IndexMaintainer(store, "c", min_writes=10, quiet_s=0.05, max_delay_s=60)  # type: ignore[arg-type]
    try:
        m.written(10)
        assert wait_for(lambda: m.state().building)
        m.written(10)  # during the build
        assert wait_for(lambda: len(store.builds) == 2)
        assert store.most_at_once == 1
    finally:
        m.close()


def test_failed_build_is_counted_and_retried_after_more_writes(
        caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore(fail=True)
    m = IndexMaintainer(store, "c", min_writes=10, quiet_s=0.05, max_delay_s=60)  # type: ignore[arg-type]
    try:
        m.written(10)
        assert wait_for(lambda: m.state().failures == 1)
        assert "background index build of c failed" in caplog.text
        store.fail = False
        m.written(10)
        assert wait_for(lambda: m.state().builds == 1)
    finally:
        m.close()


def test_aborted_build_is_counted_and_retried_without_more_writes(
        caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore()
    store.abort = True
    m = IndexMaintainer(store, "c", min_writes=10, quiet_s=0.05, max_delay_s=60)  # type: ignore[arg-type]
    try:
        m.written(10)
        assert wait_for(lambda: m.state().aborts >= 1)
        assert "given up, retried later" in caplog.text
        state = m.state()
        assert state.failures == 0 and state.builds == 0
        store.abort = False
        # The writes it was for are pending again: built after the quiet time, no new write.
        assert wait_for(lambda: m.state().builds == 1)
        assert m.state().pending_writes == 0
    finally:
        m.close()


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        IndexMaintainer(FakeStore(), "c", min_writes=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        IndexMaintainer(FakeStore(), "c", quiet_s=-1)  # type: ignore[arg-type]
