"""Vector search: qdrant-edge (HNSW, payload indexes) vs numpy brute force, and qdrant-client
local mode at 10k only (brute force, correctness path). Synthetic clustered unit vectors.

    .venv/bin/python -m bench.vector_search                       # 10k + 100k, dim 1280
    .venv/bin/python -m bench.vector_search --sizes 10000,100000,1000000 --dim 256

Dimension: the photo search path queries the "image" vector (EfficientNet-Lite0, 1280-d)
until a trained "fused" vector exists (search.py prefers "fused"); the default is 1280. Pass
--dim 256 for the fused vector's size. Recall@10 is measured against exact search with the
same filter. Filter: category prefix + price range + in stock (about 3.5% of points pass).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from backend.domain.types import Filters, PriceRange
from backend.stores.vectors.base import CollectionSpec, PointPayload, VectorPoint, point_id
from bench._common import latencies, machine, pct, rss_mb, table

CATEGORIES = [f"cat{i:02d}/sub{j}" for i in range(10) for j in range(4)]
FILTER = Filters(category="cat03", price=PriceRange(20.0, 120.0), in_stock_only=True)


def make_data(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(16, n // 100), dim)).astype(np.float32)
    which = rng.integers(0, len(centres), n)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 20_000):
        stop = min(n, start + 20_000)
        x[start:stop] = centres[which[start:stop]] + 0.7 * rng.standard_normal(
            (stop - start, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    meta = {
        "category": rng.integers(0, len(CATEGORIES), n),
        "price": rng.uniform(1, 200, n).round(2),
        "in_stock": rng.random(n) < 0.7,
    }
    return x, meta


def queries(x: np.ndarray, k: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = x[rng.integers(0, len(x), k)] + 0.3 * rng.standard_normal((k, x.shape[1]),
                                                                    dtype=np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def filter_mask(meta: dict[str, np.ndarray]) -> np.ndarray:
    top = np.array([c.split("/")[0] == FILTER.category for c in CATEGORIES])
    return (top[meta["category"]] & (meta["price"] >= 20.0) & (meta["price"] <= 120.0)
            & meta["in_stock"])


def numpy_search(x: np.ndarray, meta: dict[str, np.ndarray], q: np.ndarray, filtered: bool,
                 k: int = 10) -> np.ndarray:
    scores = x @ q
    if filtered:  # the mask is computed per query: that is what a brute-force filter costs
        scores = np.where(filter_mask(meta), scores, -np.inf)
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def payload(i: int, meta: dict[str, np.ndarray]) -> PointPayload:
    from backend.stores.vectors.base import category_prefixes

    return PointPayload(
        product_id=f"p{i}", position=0, model_version="bench", catalog_version=1,
        merchant="m", category=category_prefixes(CATEGORIES[int(meta["category"][i])]),
        size="M", material="cotton", colour="red", brand="b",
        price=float(meta["price"][i]), in_stock=bool(meta["in_stock"][i]), listed=True,
    )


def load_store(store: object, name: str, x: np.ndarray, meta: dict[str, np.ndarray],
               quant: bool, build: bool = True) -> float:
    start = time.perf_counter()
    store.ensure_collection(  # type: ignore[attr-defined]
        CollectionSpec(name, {"image": x.shape[1]}, quantize_int8=quant))
    for s in range(0, len(x), 1000):
        points = [VectorPoint(point_id(f"p{i}", 0, "bench"), {"image": x[i]}, payload(i, meta))
                  for i in range(s, min(len(x), s + 1000))]
        store.upsert(name, points)  # type: ignore[attr-defined]
    if build:
        store.build_index(name)  # type: ignore[attr-defined]
    return time.perf_counter() - start


def recall(found: list[list[int]], exact: list[np.ndarray]) -> float:
    hits = sum(len(set(f) & set(e.tolist())) for f, e in zip(found, exact, strict=True))
    return hits / max(1, sum(len(e) for e in exact))


def bench_size(n: int, dim: int, nq: int, quant_sizes: set[int], client_max: int,
               root: Path) -> list[list[object]]:
    from backend.stores.vectors.edge import EdgeVectorStore

    rows: list[list[object]] = []
    x, meta = make_data(n, dim)
    q = queries(x, nq)
    mask = filter_mask(meta)
    exact = {f: [numpy_search(x, meta, qi, f) for qi in q] for f in (False, True)}

    for f in (False, True):
        lat = latencies(lambda i, f=f: numpy_search(x, meta, q[i % nq], f), nq)
        rows.append([n, "numpy brute force", "filtered" if f else "all", pct(lat, 50),
                     pct(lat, 95), pct(lat, 99), 1.0, "-", f"{x.nbytes / 2**20:.0f}"])

    variants = [False, True] if n in quant_sizes else [False]
    for quant in variants:
        path = root / f"edge-{n}-{int(quant)}"
        before = rss_mb()
        store = EdgeVectorStore(path, hnsw_ef=128)
        build_s = load_store(store, "c", x, meta, quant)
        mem = rss_mb() - before
        disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
        label = "qdrant-edge HNSW" + (" + int8" if quant else "")
        for f in (False, True):
            filters = FILTER if f else Filters()
            found: list[list[int]] = []

            def run(i: int, filters: Filters = filters, store: EdgeVectorStore = store) -> None:
                store.search("c", "image", q[i % nq], filters, 10)

            for qi in q:
                hits = store.search("c", "image", qi, filters, 10)
                found.append([int(h.payload.product_id[1:]) for h in hits])
            lat = latencies(run, nq)
            rows.append([n, label, "filtered" if f else "all", pct(lat, 50), pct(lat, 95),
                         pct(lat, 99), recall(found, exact[f]),
                         f"{build_s:.1f}", f"+{mem:.0f} RSS, {disk:.0f} disk"])
        store.close()
        shutil.rmtree(path, ignore_errors=True)

    if n <= client_max:
        from qdrant_client import QdrantClient

        from backend.stores.vectors.server import QdrantServerStore

        cstore = QdrantServerStore(QdrantClient(":memory:"))
        build_s = load_store(cstore, "c", x, meta, False)
        for f in (False, True):
            filters = FILTER if f else Filters()
            found = [[int(h.payload.product_id[1:]) for h in
                      cstore.search("c", "image", qi, filters, 10)] for qi in q]
            lat = latencies(lambda i, filters=filters: cstore.search(
                "c", "image", q[i % nq], filters, 10), nq)
            rows.append([n, "qdrant-client local", "filtered" if f else "all", pct(lat, 50),
                         pct(lat, 95), pct(lat, 99), recall(found, exact[f]),
                         f"{build_s:.1f}", "-"])
        cstore.close()
    print(f"  n={n}: {mask.mean():.1%} of points pass the filter", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--quant-sizes", default="10000",
                    help="sizes at which int8 scalar quantisation is also built")
    ap.add_argument("--dir", help="work directory (default: a temp dir)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    quant = {int(s) for s in args.quant_sizes.split(",") if s}
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-vs-"))
    print(f"# vector search: dim {args.dim}, top 10, {args.queries} queries\n{machine()}\n")
    rows: list[list[object]] = []
    try:
        for n in sizes:
            rows += bench_size(n, args.dim, args.queries, quant, 10_000, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = {(r[0], r[2]): r[4] for r in rows if r[1] == "numpy brute force"}
    out = [[*r[:6], f"{float(base[(r[0], r[2])]) / float(r[4]):.1f}x", *r[6:]] for r in rows]
    print(table(["n", "engine", "filter", "p50 ms", "p95 ms", "p99 ms",
                 "p95 speed-up vs numpy", "recall@10", "build s", "memory MiB"], out))


if __name__ == "__main__":
    main()
