"""Text search over gRPC on 127.0.0.1 at catalog scale: hybrid (dense + lexical + exact,
fused in one qdrant-edge query) beside the dense-only path, in the same run and on the same
server, queries interleaved so both see the same machine load; then hybrid with explain and
with every facet.

N products (default 8,101, the size of the text evaluation) with real catalog rows, their
real lexical vectors and payloads, synthetic dense vectors written straight into the store,
and the real text encoder (multilingual USE, ONNX) on the query side. The Chinese queries
the lexicon renders in English (their dense half encodes two texts) are also shown apart.

    .venv/bin/python -m bench.text_search [--n 8101] [--queries 200]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from backend.app import App
from backend.domain.lexical import LEXICAL, english_rendering, product_vector
from backend.domain.payload import product_payload
from backend.stores.vectors.base import VectorPoint, point_id
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2_grpc as rpc
from backend.transport.grpc.server import BackgroundServer
from bench._app import make_app, product
from bench._common import machine, pct, table

TEXTS = ["red cotton t-shirt", "blue item", "green ceramic mug", "black wool scarf",
         "white item 512", "红色 棉", "cat03 sub1", "sku-4242", "b7", "product number 77",
         "XL", "蓝色的衣服"]
FACETS = ["category", "size", "material", "colour", "brand", "merchant", "price"]


def fill(app: App, n: int, seed: int = 0, chunk: int = 2000) -> float:
    """N products in SQL (outbox marked done) and their points: real payload and lexical
    vector, synthetic unit dense vectors."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    version = app.encoder.model_version
    coll = app.settings.collection
    for s in range(0, n, chunk):
        outcomes = app.catalog.upsert_products([product(i, rng)
                                                for i in range(s, min(n, s + chunk))])
        while claimed := app.catalog.claim_outbox(5000):
            app.catalog.mark_done([c.id for c in claimed])
        prods = app.catalog.get_products([o.product_id for o in outcomes])
        points = []
        for p in prods.values():
            vecs = {}
            for name, d in app.encoder.dims.items():
                v = rng.standard_normal(d).astype(np.float32)
                vecs[name] = v / np.linalg.norm(v)
            sparse = product_vector(p)
            points.append(VectorPoint(point_id(p.product_id, -1, version), vecs,
                                      product_payload(p, -1, version),
                                      {LEXICAL: sparse} if sparse is not None else {}))
        app.vectors.upsert(coll, points)
    app.vectors.build_index(coll)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8101)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-text-"))
    print(f"# text search over gRPC, {args.n:,} products\n{machine()}\n")
    app = make_app(root)
    try:
        print(f"filled in {fill(app, args.n):.0f} s; encoder {app.encoder.model_version}")
        server = BackgroundServer(app)
        stub = rpc.ProductSearchStub(grpc.insecure_channel(server.start()))
        settings = app.settings.search
        modes: dict[str, tuple[bool, dict[str, Any]]] = {
            "dense only (text vector, before)": (False, {}),
            "hybrid (dense + lexical + exact)": (True, {}),
            "hybrid + explain": (True, {"explain": True}),
            "hybrid + all facets": (True, {"facets": FACETS}),
        }
        samples: dict[str, list[float]] = {m: [] for m in modes}
        # The hybrid queries the lexicon renders in English (two texts encoded), on their own.
        rendered = "hybrid, Chinese queries rendered in English (of the above)"
        samples[rendered] = []
        for i in range(-3, args.queries):  # 3 warm-up rounds, not counted
            text = TEXTS[i % len(TEXTS)]
            for mode, (lexical, extra) in modes.items():
                settings.text_lexical = lexical
                request = pb.SearchRequest(text=text, top_k=10, **extra)
                t = time.perf_counter()
                stub.Search(request, timeout=30)
                if i >= 0:
                    samples[mode].append(time.perf_counter() - t)
                    if mode.startswith("hybrid (") and english_rendering(text):
                        samples[rendered].append(samples[mode][-1])
        base = pct(samples["dense only (text vector, before)"], 95)
        rows = [[m, pct(s, 50), pct(s, 95), pct(s, 99), round(pct(s, 95) / base, 2)]
                for m, s in samples.items()]
        print(table(["query", "p50 ms", "p95 ms", "p99 ms", "p95 / dense-only"], rows))
        print("target: hybrid text p95 <= 30 ms")
        server.stop()
    finally:
        app.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
