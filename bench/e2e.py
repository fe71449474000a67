"""End to end over gRPC on 127.0.0.1: text, photo and filtered text queries against N
products (synthetic vectors written straight into qdrant-edge, real catalog rows, the real
encoder on the query side), p50/p95/p99, and the service overhead: gRPC round trip minus the
same work done in-process (encode + raw vector query). Each query kind runs twice through the
same server, alternating request by request: "before" reads every hit from SQL in full and
the indexed version on every request (as search did before the product cache), "after"
with the shipped settings.

    .venv/bin/python -m bench.e2e [--n 100000] [--queries 100] [--runtime onnx|torch]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from backend.domain.hydration import ProductCache
from backend.domain.types import Filters, PriceRange
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2_grpc as rpc
from backend.transport.grpc.server import BackgroundServer
from bench._app import fill, make_app, photo_jpeg
from bench._common import latencies, machine, pct, table
from encoders.localise import query_views
from encoders.preprocess import decode_image

TEXTS = ["red cotton t-shirt", "blue leather boots", "green ceramic mug", "black wool scarf",
         "white running shoes", "红色的连衣裙", "small wooden toy", "stainless steel bottle"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--runtime", default="onnx", choices=["onnx", "torch"])
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    print(f"# end to end over gRPC, {args.n:,} products, runtime {args.runtime}\n{machine()}\n")
    app = make_app(root, runtime=args.runtime)
    try:
        fill_s = fill(app, args.n)
        print(f"catalog + vectors filled in {fill_s:.0f} s; encoder {app.encoder.model_version}")
        server = BackgroundServer(app)
        addr = server.start()
        channel = grpc.insecure_channel(addr)
        stub = rpc.ProductSearchStub(channel)
        photos = [photo_jpeg(colour=c, seed=i) for i, c in enumerate(["red", "blue", "green"])]
        flt = pb.Filters(category="cat03", price=pb.PriceRange(min=20, max=120),
                         in_stock_only=True)
        kinds = {
            "text": lambda i: pb.SearchRequest(text=TEXTS[i % len(TEXTS)], top_k=10),
            "photo (1600x1200 JPEG)": lambda i: pb.SearchRequest(
                image=photos[i % len(photos)], top_k=10),
            "text + category/price/in-stock": lambda i: pb.SearchRequest(
                text=TEXTS[i % len(TEXTS)], top_k=10, filters=flt),
        }
        dfl = Filters(category="cat03", price=PriceRange(20, 120), in_stock_only=True)
        coll = app.settings.collection
        loop = asyncio.new_event_loop()

        def in_process(i: int, kind: str) -> None:
            """The same work without the service: decode, encode, raw vector query."""
            if kind.startswith("photo"):
                img = decode_image(photos[i % len(photos)],
                                   draft_px=app.settings.search.query_image_draft_px)
                views = query_views(img)
                for view in views:
                    v = loop.run_until_complete(app.encoder.encode(view, None))
                    app.vectors.search(coll, "image", v["image"], Filters(), 10)
                return
            v = loop.run_until_complete(app.encoder.encode(None, TEXTS[i % len(TEXTS)]))
            app.vectors.search(coll, "text", v["text"], dfl if "+" in kind else Filters(), 10)

        rows = []
        pid = app.vectors.scroll_payloads(coll)[0][1].product_id
        vec = app.vectors.get_vectors(coll, pid, "image")[0][1]
        cached = app.search.products
        ttl_s = app.search._indexed.ttl_s

        def hydration(mode: str) -> None:
            """before: every hit read from SQL in full and the indexed version read on every
            request (the path before the product cache); after: the shipped settings."""
            app.search.products = ProductCache(0) if mode == "before" else cached
            app.search._indexed.ttl_s = 0.0 if mode == "before" else ttl_s

        def alternating(call: Callable[[int], object]) -> dict[str, list[float]]:
            """The two modes request by request, so a busy spell on a shared machine hits
            both alike."""
            out: dict[str, list[float]] = {"before": [], "after": []}
            for i in range(2 * args.queries + 4):
                mode = ("before", "after")[i % 2]
                hydration(mode)
                start = time.perf_counter()
                call(i // 2)
                if i >= 4:  # warm-up
                    out[mode].append(time.perf_counter() - start)
            return out

        for kind, make in kinds.items():
            raw = latencies(lambda i, kind=kind: in_process(i, kind), args.queries, budget_s=90)
            both = alternating(lambda i, make=make: stub.Search(make(i), timeout=30))
            for mode, e2e in both.items():
                rows.append([kind, mode, pct(e2e, 50), pct(e2e, 95), pct(e2e, 99),
                             pct(raw, 50), pct(raw, 95), pct(e2e, 50) - pct(raw, 50)])
        # Pure vector query vs the same through the service (more like this: no encoding).
        rawv = latencies(lambda i: app.vectors.search(coll, "image", vec, Filters(), 10),
                         args.queries)
        both = alternating(lambda i: stub.Search(pb.SearchRequest(product_id=pid, top_k=10),
                                                 timeout=30))
        for mode, mlt in both.items():
            rows.append(["more like this (no encoding)", mode, pct(mlt, 50), pct(mlt, 95),
                         pct(mlt, 99), pct(rawv, 50), pct(rawv, 95),
                         pct(mlt, 50) - pct(rawv, 50)])
        print(table(["query", "hydration", "gRPC p50 ms", "p95 ms", "p99 ms",
                     "in-process p50 ms", "in-process p95 ms", "service overhead p50 ms"],
                    rows))
        print(f"product cache: {cached.hits} hits, {cached.misses} misses")
        print("targets: text p95 <= 30 ms, photo p95 <= 150 ms, overhead p50 <= 1.5 ms")
        channel.close()
        t = time.perf_counter()
        server.stop()
        print(f"(server stopped in {time.perf_counter() - t:.1f} s)")
        loop.close()
    finally:
        app.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
