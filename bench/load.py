"""Load test: N concurrent clients (default 32) search for a bounded time against a server on
127.0.0.1 and the script reports throughput, p50/p95/p99 latency and the count of each status
code. Without --addr it starts its own server (real encoder, real stores) over a small catalog
of openclipart images in a temporary folder, with API keys required.

    .venv/bin/python -m bench.load                       # own server, 32 clients, 20 s
    .venv/bin/python -m bench.load --clients 64 --max-queue 16 --deadline 1
    PRODSEARCH_API_KEY=psk_... .venv/bin/python -m bench.load --addr 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2_grpc as rpc

TEXTS = ["cat", "red flower", "a useful thing", "animal", "car", "house", "tree", "bird",
         "红色的花", "blue shirt", "lamp", "guitar"]


@contextmanager
def own_server(products: int, max_queue: int) -> Iterator[tuple[str, str, list[bytes]]]:
    from backend.app import build_app
    from backend.config import load_settings
    from backend.demo import photo_of
    from backend.demo_catalog import OPENCLIPART_DIR, build_catalog, pick_images, write_catalog
    from backend.domain.ingest import ingest_file
    from backend.security import ApiKeys
    from backend.transport.grpc.server import BackgroundServer

    with tempfile.TemporaryDirectory(prefix="prodsearch-load-") as tmp:
        data = Path(tmp)
        settings = load_settings(data_dir=data, grpc_port=0,
                                 encoder={"max_queue": max_queue})
        catalog = build_catalog(pick_images(OPENCLIPART_DIR, products, seed=7), OPENCLIPART_DIR)
        write_catalog(catalog, data / "catalog.jsonl")
        app = build_app(settings)
        ingest_file(data / "catalog.jsonl", app.catalog)
        app.encoder.start()
        app.indexer.drain()
        key = ApiKeys(app.catalog).create("storefront").key
        photos = [photo_of(Path(str(item["images"][0])), seed=n)  # type: ignore[index]
                  for n, item in enumerate(catalog[:8])]
        server = BackgroundServer(app)
        try:
            yield server.start(), key, photos
        finally:
            server.stop()
            app.close()


async def client(stub: rpc.ProductSearchStub, until: float, deadline: float, key: str,
                 photos: list[bytes], image_share: float, seed: int,
                 latencies: list[float], codes: Counter[str]) -> None:
    rng = random.Random(seed)
    metadata = (("x-api-key", key),) if key else ()
    while time.perf_counter() < until:
        if photos and rng.random() < image_share:
            request = pb.SearchRequest(image=rng.choice(photos), top_k=10)
        else:
            request = pb.SearchRequest(text=rng.choice(TEXTS), top_k=10)
        start = time.perf_counter()
        try:
            await stub.Search(request, timeout=deadline, metadata=metadata)
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                await asyncio.sleep(0.01 + rng.random() * 0.02)  # back off a little
        latencies.append(time.perf_counter() - start)
        codes[code] += 1


async def run(addr: str, clients: int, seconds: float, deadline: float, key: str,
              photos: list[bytes], image_share: float) -> None:
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = rpc.ProductSearchStub(channel)
        # Warm-up request outside the measurement.
        await stub.Search(pb.SearchRequest(text="warm up", top_k=1), timeout=60,
                          metadata=(("x-api-key", key),) if key else ())
        start = time.perf_counter()
        until = start + seconds
        await asyncio.gather(*(client(stub, until, deadline, key, photos, image_share, n,
                                      latencies, codes) for n in range(clients)))
        elapsed = time.perf_counter() - start
    ok = codes.get("OK", 0)
    ms = sorted(x * 1000 for x in latencies)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(p / 100 * len(ms)))] if ms else float("nan")

    print(f"clients {clients}, {elapsed:.1f} s, deadline {deadline:.1f} s, "
          f"image queries {image_share:.0%}")
    print(f"requests {len(ms)}: {len(ms) / elapsed:.1f}/s, OK {ok / elapsed:.1f}/s")
    print(f"latency ms (all): p50 {pct(50):.1f}  p95 {pct(95):.1f}  p99 {pct(99):.1f}  "
          f"mean {statistics.fmean(ms) if ms else float('nan'):.1f}")
    for code, count in sorted(codes.items(), key=lambda kv: -kv[1]):
        print(f"  {code:<20} {count}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addr", help="an existing server (default: start one)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--deadline", type=float, default=2.0, help="per request, seconds")
    parser.add_argument("--image-share", type=float, default=0.2,
                        help="share of photo queries (own server only)")
    parser.add_argument("--products", type=int, default=200, help="own server's catalog")
    parser.add_argument("--max-queue", type=int, default=256, help="own server's encoder queue")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.addr:
        asyncio.run(run(args.addr, args.clients, args.seconds, args.deadline,
                        os.environ.get("PRODSEARCH_API_KEY", ""), [], 0.0))
        return 0
    with own_server(args.products, args.max_queue) as (addr, key, photos):
        asyncio.run(run(addr, args.clients, args.seconds, args.deadline, key, photos,
                        args.image_share))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
