"""The vector index of a live server: N points upserted the way the running server's indexer
writes them (chunks of 1,000 into qdrant-edge, no build), into two identical collections,
then

- search as it is after such writes: nothing indexed, every query a scan;
- the index built while searches keep running on the main thread, both ways in one run:
  "in-process" is qdrant-edge's `optimize` called in a background thread of this process
  (what `build_index` did before), "child process" is `EdgeVectorStore.build_index` (a copy
  of the shard optimised by a child process, then switched to, the writes meanwhile
  replayed). For each: searches answered during the build, and the longest gap between
  two answers; for the child process, how long writes and reads were paused to switch;
- search once the index is built.

Synthetic clustered unit vectors (bench.vector_search), filter category + price + in stock.

    .venv/bin/python -m bench.live_index [--n 20000] [--dim 1280]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from backend.domain.types import Filters
from bench._common import machine, pct, table
from bench.vector_search import FILTER, load_store, make_data, queries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--queries", type=int, default=100)
    args = ap.parse_args()
    from backend.stores.vectors.edge import EdgeVectorStore

    print(f"# live index: {args.n:,} points, dim {args.dim}\n{machine()}\n")
    root = Path(tempfile.mkdtemp(prefix="bench-live-"))
    x, meta = make_data(args.n, args.dim)
    q = queries(x, args.queries)
    store = EdgeVectorStore(root / "edge", hnsw_ef=128)
    rows: list[list[object]] = []
    builds: list[list[object]] = []
    phase_rows: list[list[object]] = []
    try:
        for name in ("inproc", "child"):
            load_s = load_store(store, name, x, meta, quant=False, build=False)
            print(f"{name}: upserted in {load_s:.1f} s; {store.index_state(name)}", flush=True)

        def sample(name: str, filters: Filters, n: int) -> list[float]:
            out = []
            for i in range(n):
                start = time.perf_counter()
                store.search(name, "image", q[i % len(q)], filters, 10)
                out.append(time.perf_counter() - start)
            return out

        for fname, flt in (("all", Filters()), ("filtered", FILTER)):
            lat = sample("child", flt, args.queries)
            rows.append(["after upserts, nothing built", fname, len(lat), pct(lat, 50),
                         pct(lat, 95), max(lat) * 1e3])
            print(*rows[-1], sep=" | ", flush=True)

        def in_process() -> None:
            # What build_index did before: optimize on the live shard, in this process.
            with store._use("inproc") as coll:
                coll.shard.optimize()
                coll.shard.flush()

        def child_process() -> None:
            store.build_index("child")

        def during(name: str, build: Callable[[], None]) -> None:
            lat: list[float] = []
            done = threading.Event()
            build_s = [0.0]

            def run() -> None:
                start = time.perf_counter()
                try:
                    build()
                finally:
                    build_s[0] = time.perf_counter() - start
                    done.set()

            thread = threading.Thread(target=run, name="build")
            # The longest wait for an answer is the longest gap between answers: a search
            # (or the thread issuing it) may be held up before the timer starts (the GIL).
            last = time.perf_counter()
            stall = 0.0
            gaps: list[tuple[float, float]] = []  # (from, to) of gaps over 50 ms
            thread.start()
            i = 0
            while not done.is_set():
                start = time.perf_counter()
                store.search(name, "image", q[i % len(q)], FILTER if i % 2 else Filters(), 10)
                end = time.perf_counter()
                lat.append(end - start)
                if end - last > 0.05:
                    gaps.append((last, end))
                stall, last = max(stall, end - last), end
                i += 1
            thread.join()
            stall = max(stall, time.perf_counter() - last)
            times = store.last_build if name == "child" else None
            if times is not None:
                # Which phase of the build each long gap overlapped.
                for phase, p0, p1 in times.phases:
                    hit = [b - a for a, b in gaps if a < p1 and b > p0]
                    phase_rows.append([phase, f"{(p1 - p0) * 1e3:,.1f}", len(hit),
                                       f"{max(hit, default=0) * 1e3:,.0f}"])
                print(table(["phase", "ms", "gaps > 50 ms overlapping it",
                             "longest of those ms"], phase_rows), flush=True)
            label = "in-process optimize (before)" if name == "inproc" else \
                "child process + switch (now)"
            builds.append([label, f"{build_s[0]:.1f}", len(lat), pct(lat, 50), pct(lat, 95),
                           f"{stall * 1e3:,.0f}",
                           f"{times.writes_paused_s * 1e3:.1f}" if times else "-",
                           f"{times.reads_paused_s * 1e3:.2f}" if times else "-",
                           f"{times.copy_s * 1e3:.0f}" if times else "-"])
            print(*builds[-1], sep=" | ", flush=True)

        during("inproc", in_process)
        during("child", child_process)
        for fname, flt in (("all", Filters()), ("filtered", FILTER)):
            lat = sample("child", flt, args.queries)
            rows.append(["index built", fname, len(lat), pct(lat, 50), pct(lat, 95),
                         max(lat) * 1e3])
        print(f"built: in-process {store.index_state('inproc')}, "
              f"child {store.index_state('child')}")
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)
    print(table(["state", "filter", "searches", "p50 ms", "p95 ms", "slowest ms"], rows))
    print()
    print(table(["build", "seconds", "searches answered during it", "p50 ms", "p95 ms",
                 "longest gap between answers ms", "writes paused ms", "reads paused ms",
                 "copy (writes paused) ms"], builds))


if __name__ == "__main__":
    main()
