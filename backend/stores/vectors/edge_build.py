"""Builds the HNSW index of a copy of a qdrant-edge shard in a process of its own.

    python -m backend.stores.vectors.edge_build SHARD_DIR --parent PID

Run by `EdgeVectorStore.build_index`: qdrant-edge's `optimize` holds Python's GIL for the
whole build, so in the serving process it would stop every thread. Here it runs at the
lowest CPU priority on a copy that nothing else has open, and the process dies with its
parent (Linux), so a killed server leaves no builder writing into a directory that the
next start removes.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent may have died before the signal was armed.
    if parent and os.getppid() != parent:
        sys.exit("the process that started this build is gone")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="the shard directory (a copy, not a live shard)")
    ap.add_argument("--parent", type=int, default=0, help="pid to die with")
    args = ap.parse_args(argv)
    _die_with_parent(args.parent)
    with contextlib.suppress(OSError):
        os.nice(19)
    import qdrant_edge as qe

    shard = qe.EdgeShard.load(args.path)
    try:
        shard.optimize()
        shard.flush()
    finally:
        shard.close()


if __name__ == "__main__":
    main()
