"""The vector index of a live server: N points upserted the way the running server's indexer
writes them (chunks of 1,000 into qdrant-edge, no build), then

- search as it is today after such writes: nothing indexed, every query a scan;
- `build_index` (qdrant-edge `optimize`) in a background thread while searches keep running
  on the main thread: are reads served during the build, and how slow is the slowest one;
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
    try:
        load_s = load_store(store, "c", x, meta, quant=False, build=False)
        print(f"upserted in {load_s:.1f} s; {store.index_state('c')}", flush=True)

        def sample(filters: Filters, n: int) -> list[float]:
            out = []
            for i in range(n):
                start = time.perf_counter()
                store.search("c", "image", q[i % len(q)], filters, 10)
                out.append(time.perf_counter() - start)
            return out

        for label in ("after upserts, nothing built (today)",):
            for name, flt in (("all", Filters()), ("filtered", FILTER)):
                lat = sample(flt, args.queries)
                rows.append([label, name, len(lat), pct(lat, 50), pct(lat, 95), max(lat) * 1e3])
                print(*rows[-1], sep=" | ", flush=True)

        during: list[float] = []
        done = threading.Event()
        build_s = [0.0]

        def build() -> None:
            start = time.perf_counter()
            store.build_index("c")
            build_s[0] = time.perf_counter() - start
            done.set()

        thread = threading.Thread(target=build, name="build")
        # The longest wait for an answer is the longest gap between answers: a search (or
        # the thread issuing it) may be held up before the timer starts, e.g. by the GIL.
        last = time.perf_counter()
        stall = 0.0
        thread.start()
        i = 0
        while not done.is_set():
            start = time.perf_counter()
            store.search("c", "image", q[i % len(q)], FILTER if i % 2 else Filters(), 10)
            end = time.perf_counter()
            during.append(end - start)
            stall, last = max(stall, end - last), end
            i += 1
        thread.join()
        stall = max(stall, time.perf_counter() - last)
        rows.append([f"while the index builds ({build_s[0]:.1f} s)", "both", len(during),
                     pct(during, 50), pct(during, 95), stall * 1e3])
        print(*rows[-1], sep=" | ", flush=True)
        for name, flt in (("all", Filters()), ("filtered", FILTER)):
            lat = sample(flt, args.queries)
            rows.append(["index built", name, len(lat), pct(lat, 50), pct(lat, 95),
                         max(lat) * 1e3])
        print(f"built: {store.index_state('c')}")
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)
    print(table(["state", "filter", "searches", "p50 ms", "p95 ms",
                 "slowest ms (while building: longest gap between answers)"], rows))


if __name__ == "__main__":
    main()
