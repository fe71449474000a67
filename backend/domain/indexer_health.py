"""Whether the background indexer is making progress, for the health service and metrics.

Progress is a pass that found nothing pending or marked at least one outbox row done. The
indexer is stuck when there has been none for `stall_s` seconds: passes that keep failing
(a broken store), a pass that never returns (a hung read, a wedged encoder), passes whose
writes never verify, or a loop that has died.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from backend.domain.indexing import DrainStats


class IndexerHealth:
    def __init__(self, stall_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s = stall_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_progress = clock()
        self._dead: str | None = None

    def passed(self, stats: DrainStats) -> None:
        """A drain pass returned."""
        if stats.rows == 0 or stats.done > 0:
            with self._lock:
                self._last_progress = self._clock()
                self._dead = None  # a restarted loop that works again

    def died(self, reason: str) -> None:
        with self._lock:
            self._dead = reason

    def revived(self) -> None:
        with self._lock:
            self._dead = None
            self._last_progress = self._clock()

    def seconds_since_progress(self) -> float:
        with self._lock:
            return max(0.0, self._clock() - self._last_progress)

    def stuck(self) -> str | None:
        """Why the indexer is stuck, or None while it makes progress."""
        with self._lock:
            if self._dead is not None:
                return self._dead
            idle = self._clock() - self._last_progress
        if idle > self.stall_s:
            return (f"no outbox row indexed for {idle:.0f} s (limit {self.stall_s:.0f} s) "
                    "while changes wait")
        return None
