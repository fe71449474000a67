"""Keeping the vector index built on a live server.

Points written through the running server land in small unindexed segments: before this,
only `demo`, `ingest` and `reindex` built the HNSW index, so after bulk writes through the
server every search scanned (bench/live_index.py). The indexer now reports how many points
it wrote; once `min_writes` have accumulated and writes pause for `quiet_s` (or have gone on
for `max_delay_s`), a background thread at low CPU priority builds the index.

On the embedded store `build_index` builds outside the serving process: qdrant-edge 0.9's
`optimize` holds Python's GIL for the whole build, so run in-process it stopped every thread
of the server (searches, health checks, the event loop) for the whole build. Now a copy of
the shard is optimised by a child process at the lowest CPU priority while the server keeps
serving reads and writes; the writes made meanwhile are replayed on the built copy, which is
then switched to (backend/stores/vectors/edge.py). Measured side by side in one run
(bench/live_index.py, 10,000 1280-d points, 2-core VM at load 3.9): the in-process build
answered 10 searches in 10.9 s, its longest gap between answers 10.9 s; the child-process
build answered 4,687 searches in 26.8 s (the child runs at nice 19 beside a busy search
loop), longest gap 442 ms; the switch paused writes for 5.8 ms and reads for 1.2 ms, and the
copy at the start paused writes (not reads) for 1.6 s. The gaps came from the three
qdrant-edge calls left in the serving process, which hold the GIL: the flush before the
copy, opening the built shard and closing the replaced one. With the shard's files written
back (fdatasync) before the flush and the close and read ahead before the open, all without
the GIL, and no flush while writes are paused, the longest gap went from 1,345 ms to 273 ms
(flush ~270 ms, open ~290 ms, close ~160 ms) in two runs of the same bench (load 3.4 and
4.1; the in-process build in them: 21.6 s and 18.2 s), the copy paused writes for 537 ms
instead of 2.0 s, the switch 2.1 ms (writes) and 1.2 ms (reads); bench/RESULTS.md. Still
over the 50 ms target: those three calls cannot be split from Python. So the builder is on
by default (`index_build_min_writes` 1000). The writes made during a build are recorded in
memory up to `index_build_max_recorded_mb`; past that the build is given up, counted as an
abort, and retried once writes pause. With a Qdrant server the build runs in the server and
`build_index` only waits, so there it costs the serving process nothing. Payload indexes are
part of the collection and are carried into the rebuilt segments. The state (writes not yet
built, builds, failures, the last build's duration, whether one is running) is exported as
metrics; a failed or timed-out build (`index_build_timeout_s`) counts as a failure and the
collection keeps serving from its live shard.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from backend.domain.vectors import VectorStore
from backend.errors import BuildAborted
from encoders.priority import lower_this_thread

__all__ = ["IndexMaintainer", "MaintainerState"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaintainerState:
    pending_writes: int  # points written since the last build started
    building: bool
    builds: int
    last_build_s: float  # duration of the last build (0 before the first)
    failures: int
    aborts: int = 0  # builds given up because of the writes made meanwhile (retried)


class IndexMaintainer:
    def __init__(self, vectors: VectorStore, collection: str, *, min_writes: int = 1000,
                 quiet_s: float = 2.0, max_delay_s: float = 60.0) -> None:
        if min_writes < 1:
            raise ValueError(f"min_writes must be >= 1, got {min_writes}")
        if quiet_s < 0 or max_delay_s < 0:
            raise ValueError("quiet_s and max_delay_s must be >= 0")
        self._vectors = vectors
        self._collection = collection
        self.min_writes = min_writes
        self.quiet_s = quiet_s
        self.max_delay_s = max_delay_s
        self._cond = threading.Condition()
        self._pending = 0
        self._first_write = 0.0
        self._last_write = 0.0
        self._building = False
        self._builds = 0
        self._failures = 0
        self._aborts = 0
        self._last_build_s = 0.0
        self._closed = False
        self._thread: threading.Thread | None = None

    def written(self, points: int) -> None:
        """Called by the indexer after each pass with the points it upserted."""
        if points <= 0:
            return
        now = time.monotonic()
        with self._cond:
            if self._closed:
                return
            if not self._pending:
                self._first_write = now
            self._pending += points
            self._last_write = now
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="index-maintainer",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def state(self) -> MaintainerState:
        with self._cond:
            return MaintainerState(self._pending, self._building, self._builds,
                                   self._last_build_s, self._failures, self._aborts)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop; a build in progress finishes in its thread (the store cannot cancel it)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _due_in(self, now: float) -> float | None:
        """Seconds until a build is due (0: now), None while too few points are pending."""
        if self._pending < self.min_writes:
            return None
        return max(0.0, min(self._last_write + self.quiet_s,
                            self._first_write + self.max_delay_s) - now)

    def _run(self) -> None:
        # Building is bulk work: the searches it runs beside come first.
        lower_this_thread()
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    wait = self._due_in(time.monotonic())
                    if wait == 0.0:
                        break
                    self._cond.wait(wait)
                taken = self._pending
                self._pending = 0
                self._building = True
            start = time.perf_counter()
            aborted = False
            try:
                self._vectors.build_index(self._collection)
                ok = True
            except BuildAborted as exc:
                # Too many writes to record while it ran: again once they slow down.
                log.warning("background index build of %s given up, retried later: %s",
                            self._collection, exc)
                ok, aborted = False, True
            except Exception:
                log.exception("background index build of %s failed; retrying after the "
                              "next writes", self._collection)
                ok = False
            seconds = time.perf_counter() - start
            with self._cond:
                self._building = False
                if ok:
                    self._builds += 1
                    self._last_build_s = seconds
                elif aborted:
                    self._aborts += 1
                    # Due again `quiet_s` after the last write, or `max_delay_s` from now.
                    if not self._pending:
                        self._first_write = time.monotonic()
                    self._pending += taken
                else:
                    self._failures += 1
            if ok:
                log.info("vector index of %s built in the background in %.1f s",
                         self._collection, seconds)
