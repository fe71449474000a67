"""Freshness over gRPC on 127.0.0.1: time from UpdateInventory returning until a filtered
search (in stock only) reflects it, and from UpsertProducts returning until the new product
is found by search (the background indexer encodes it: outbox -> encode -> upsert).

    .venv/bin/python -m bench.freshness [--n 2000] [--trials 10]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2_grpc as rpc
from backend.transport.grpc.server import BackgroundServer
from bench._app import fill, make_app, photo_jpeg
from bench._common import machine, pct, table


def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> float:
    start = time.perf_counter()
    while not cond():
        if time.perf_counter() - start > timeout:
            return float("inf")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="<= 1000 (the filter keeps n/7 * 0.7)")
    ap.add_argument("--trials", type=int, default=10)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-fresh-"))
    print(f"# freshness, {args.n:,} products\n{machine()}\n")
    app = make_app(root)
    try:
        fill(app, args.n)
        server = BackgroundServer(app)
        addr = server.start()
        channel = grpc.insecure_channel(addr)
        search, catalog = rpc.ProductSearchStub(channel), rpc.CatalogStub(channel)
        stock: list[float] = []
        upsert: list[float] = []
        for t in range(args.trials):
            # An in-stock product; the filter (its merchant, in stock) keeps fewer than 100.
            p = app.catalog.get_products(
                [pl.product_id for _, pl in app.vectors.scroll_payloads(app.settings.collection)
                 if pl.in_stock][t:t + 1])
            prod = next(iter(p.values()))
            flt = pb.Filters(merchants=[prod.merchant], in_stock_only=True)

            def visible(flt: pb.Filters = flt, pid: str = prod.product_id) -> bool:
                r = search.Search(pb.SearchRequest(text="item", filters=flt, top_k=100),
                                  timeout=30)
                return any(h.product.product_id == pid for h in r.hits)

            assert visible()
            catalog.UpdateInventory(pb.UpdateInventoryRequest(updates=[pb.InventoryUpdate(
                product_id=prod.product_id, warehouse="w1", bin="a1", quantity=0)]), timeout=30)
            stock.append(wait_until(lambda v=visible: not v()))

            merchant = f"fresh-{t}"
            reply = catalog.UpsertProducts(iter([pb.Product(
                sku=f"new-{t}", merchant=merchant, title=f"new red thing {t}",
                category="fresh/items", price=pb.Money(amount=10.0, currency="EUR"),
                inventory=[pb.StockLevel(warehouse="w1", bin="b", quantity=3)],
                images=[pb.ProductImage(content=photo_jpeg((800, 600), seed=t))])]), timeout=30)
            new_id = reply.product_ids[0]
            mflt = pb.Filters(merchants=[merchant])

            def found(mflt: pb.Filters = mflt, pid: str = new_id) -> bool:
                r = search.Search(pb.SearchRequest(text="new red thing", filters=mflt,
                                                   top_k=10), timeout=30)
                return any(h.product.product_id == pid for h in r.hits)

            upsert.append(wait_until(found))
        rows = [["UpdateInventory -> filtered search", pct(stock, 50), pct(stock, 95),
                 max(stock) * 1000],
                ["UpsertProducts (1 image) -> found", pct(upsert, 50), pct(upsert, 95),
                 max(upsert) * 1000]]
        print(table(["change", "p50 ms", "p95 ms", "max ms"], rows))
        print("target: <= 1 s. (A search takes the query-encoding time too; the poll loop "
              "resolution is one search.)")
        channel.close()
        server.stop()
    finally:
        app.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
