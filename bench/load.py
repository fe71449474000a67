"""Load test: N concurrent clients (default 32) search for a bounded time against a server on
127.0.0.1 and the script reports throughput, p50/p95/p99 latency and the count of each status
code. Without --addr it starts its own server (real encoder, real stores) over a small catalog
of openclipart images in a temporary folder, with API keys required.

    .venv/bin/python -m bench.load                       # own server, 32 clients, 20 s
    .venv/bin/python -m bench.load --clients 64 --max-queue 16 --deadline 1
    PRODSEARCH_API_KEY=psk_... .venv/bin/python -m bench.load --addr 127.0.0.1:50051

`--expensive` (own server only): the overload scenario. First, with no load, a probe client
checks health every 20 ms and another sends plain text searches one after the other; then
the same probes run while 16 clients (--clients) send the most expensive requests the API
accepts: photo searches with the largest photo that decodes, diversified searches at the
deepest page allowed, more-like-this diversified, restock on a shelf-sized photo and matches
with eight photos (the most each call allows). Like any gRPC client with a retry
policy, the loaders back off exponentially (50 ms doubling to 1 s, with jitter) after
RESOURCE_EXHAUSTED. It prints the probes' latencies side by side and checks the targets:
health p99 <= 100 ms, plain search p95 <= its no-load p95 x 1.5.

    .venv/bin/python -m bench.load --expensive --clients 16 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2_grpc as rpc

WAREHOUSE = "berlin"  # one of backend.demo_catalog.WAREHOUSES

TEXTS = ["cat", "red flower", "a useful thing", "animal", "car", "house", "tree", "bird",
         "红色的花", "blue shirt", "lamp", "guitar"]


@dataclass
class Keys:
    storefront: str
    warehouse: str


@contextmanager
def own_server(products: int, max_queue: int, keys_out: list[Keys] | None = None
               ) -> Iterator[tuple[str, str, list[bytes]]]:
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
        ingest_file(data / "catalog.jsonl", app.catalog, roots=[OPENCLIPART_DIR])
        app.encoder.start()
        app.indexer.drain()
        key = ApiKeys(app.catalog).create("storefront").key
        if keys_out is not None:
            keys_out.append(Keys(key, ApiKeys(app.catalog).create(
                "warehouse", warehouses=[WAREHOUSE]).key))
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


# ----------------------------------------------------------------------- --expensive

def _pct(values: list[float], p: float) -> float:
    ms = sorted(values)
    return ms[min(len(ms) - 1, int(p / 100 * len(ms)))] * 1000 if ms else float("nan")


def largest_photos(photos: list[bytes]) -> tuple[bytes, bytes]:
    """(a PNG at the most pixels the server decodes, a JPEG at the most pixels it accepts),
    both upscaled from a real photo so that they look like one."""
    from PIL import Image

    from backend.config import SearchSettings

    limits = SearchSettings()
    base = Image.open(io.BytesIO(photos[0])).convert("RGB")
    side = int(limits.max_decode_pixels ** 0.5)
    png = io.BytesIO()
    base.resize((side, side)).save(png, "PNG", compress_level=9)
    width = int((limits.max_image_pixels * 1.5) ** 0.5)
    height = limits.max_image_pixels // width
    jpeg = io.BytesIO()
    base.resize((width, height)).save(jpeg, "JPEG", quality=80)
    for data in (png.getvalue(), jpeg.getvalue()):
        assert len(data) <= limits.max_image_bytes, len(data)
    return png.getvalue(), jpeg.getvalue()


async def probe(call: Callable[[], Awaitable[object]], until: float, pause: float,
                latencies: list[float], codes: Counter[str]) -> None:
    while time.perf_counter() < until:
        start = time.perf_counter()
        try:
            await call()
            codes["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            codes[exc.code().name] += 1
        latencies.append(time.perf_counter() - start)
        await asyncio.sleep(pause)


KINDS = ("photo PNG diversify", "photo JPEG", "text diversify deep", "similar diversify deep",
         "restock", "match 8 photos")


@dataclass
class LoadSpec:
    addr: str
    keys: Keys
    png: bytes
    jpeg: bytes
    photos: list[bytes]
    product_id: str
    deep: str
    top: int
    clients: int
    seconds: float
    deadline: float


def run_loaders(spec: LoadSpec, results: Any) -> None:
    """In a child process: `spec.clients` clients send the most expensive requests for
    `spec.seconds`; puts (status counts, latencies in s) on `results`."""
    codes: Counter[str] = Counter()
    details: dict[str, str] = {}
    latencies: list[float] = []
    store = (("x-api-key", spec.keys.storefront),)
    warehouse = (("x-api-key", spec.keys.warehouse),)
    png, jpeg, top, deadline, deep = spec.png, spec.jpeg, spec.top, spec.deadline, spec.deep
    listing = pb.Product(title="a thing", images=[pb.ProductImage(content=p)
                                                  for p in (spec.photos * 8)[:8]])

    async def client(n: int, until: float) -> None:
        local = random.Random(n)
        async with grpc.aio.insecure_channel(spec.addr) as channel:
            stub = rpc.ProductSearchStub(channel)
            kinds: list[Callable[[], Awaitable[object]]] = [  # names: KINDS
                lambda: stub.Search(pb.SearchRequest(image=png, top_k=top, diversify=True),
                                    timeout=deadline, metadata=store),
                lambda: stub.Search(pb.SearchRequest(image=jpeg, top_k=top),
                                    timeout=deadline, metadata=store),
                lambda: stub.Search(pb.SearchRequest(text="cat", top_k=top, diversify=True,
                                                     page_token=deep),
                                    timeout=deadline, metadata=store),
                lambda: stub.Search(pb.SearchRequest(product_id=spec.product_id, top_k=top,
                                                     diversify=True, page_token=deep),
                                    timeout=deadline, metadata=store),
                lambda: stub.FindRestockMatches(pb.RestockRequest(
                    image=jpeg, warehouse=WAREHOUSE, top_k=20), timeout=deadline,
                    metadata=warehouse),
                lambda: stub.MatchProduct(pb.MatchRequest(listing=listing, top_k=10),
                                          timeout=deadline, metadata=store),
            ]
            backoff = 0.05
            while time.perf_counter() < until:
                start = time.perf_counter()
                kind = local.randrange(len(kinds))
                try:
                    await kinds[kind]()
                    codes[f"{KINDS[kind]} OK"] += 1
                    backoff = 0.05
                except grpc.aio.AioRpcError as exc:
                    codes[f"{KINDS[kind]} {exc.code().name}"] += 1
                    if exc.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                          grpc.StatusCode.DEADLINE_EXCEEDED):
                        details.setdefault(KINDS[kind], exc.details() or "")
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        await asyncio.sleep(backoff * (0.5 + local.random()))
                        backoff = min(1.0, backoff * 2)
                latencies.append(time.perf_counter() - start)

    async def all_clients() -> None:
        until = time.perf_counter() + spec.seconds
        await asyncio.gather(*(client(n, until) for n in range(spec.clients)))

    asyncio.run(all_clients())
    for kind, text in details.items():
        print(f"  {kind}: {text}")
    results.put((dict(codes), latencies))


async def run_expensive(addr: str, keys: Keys, photos: list[bytes], clients: int,
                        seconds: float, deadline: float) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from backend.config import SearchSettings
    from backend.domain.search import encode_page_token

    png, jpeg = largest_photos(photos)
    window = SearchSettings().max_diversify_window
    top = SearchSettings().max_top_k
    deep = encode_page_token(window - top)
    store = (("x-api-key", keys.storefront),)
    print(f"largest photos: PNG {len(png) / 1e6:.1f} MB, JPEG {len(jpeg) / 1e6:.1f} MB; "
          f"diversify window {window}")

    async with grpc.aio.insecure_channel(addr) as probe_channel:
        health = health_pb2_grpc.HealthStub(probe_channel)
        plain = rpc.ProductSearchStub(probe_channel)
        some = await plain.Search(pb.SearchRequest(text="thing", top_k=1), timeout=60,
                                  metadata=store)
        product_id = some.hits[0].product.product_id
        rng = random.Random(1)

        def health_call() -> Awaitable[object]:
            return health.Check(health_pb2.HealthCheckRequest(), timeout=5)

        def plain_call() -> Awaitable[object]:
            return plain.Search(pb.SearchRequest(text=rng.choice(TEXTS), top_k=10),
                                timeout=10, metadata=store)

        async def probes(span: float) -> tuple[list[float], list[float], Counter[str]]:
            h: list[float] = []
            p: list[float] = []
            codes: Counter[str] = Counter()
            until = time.perf_counter() + span
            await asyncio.gather(probe(health_call, until, 0.02, h, codes),
                                 probe(plain_call, until, 0.02, p, codes))
            return h, p, codes

        for _ in range(5):  # warm-up
            await plain_call()
        idle_h, idle_p, idle_codes = await probes(seconds)

        spec = LoadSpec(addr, keys, png, jpeg, photos, product_id, deep, top, clients,
                        seconds + 1.0, deadline)
        # The loaders run in their own process: on this process's event loop they would
        # delay the probes' own sends and receives, and the probes would measure the client.
        ctx = multiprocessing.get_context("spawn")
        results: Any = ctx.Queue()
        loader = ctx.Process(target=run_loaders, args=(spec, results), daemon=True)
        loader.start()
        await asyncio.sleep(2.0)  # the process starts, then the load builds up
        load_h, load_p, load_codes = await probes(seconds)
        heavy, heavy_ms = await asyncio.to_thread(results.get, True, 120)
        heavy_codes = Counter(heavy)
        await asyncio.to_thread(loader.join, 30)

    print(f"\n{clients} clients sending expensive requests, probes for {seconds:.0f} s each phase")
    print("| probe | phase | calls | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for name, idle, loaded in (("health", idle_h, load_h), ("plain search", idle_p, load_p)):
        for phase, values in (("no load", idle), ("under load", loaded)):
            print(f"| {name} | {phase} | {len(values)} | {_pct(values, 50):.1f} | "
                  f"{_pct(values, 95):.1f} | {_pct(values, 99):.1f} |")
    print(f"probe codes: no load {dict(idle_codes)}, under load {dict(load_codes)}")
    print(f"expensive requests: {len(heavy_ms)}, p50 {_pct(heavy_ms, 50):.0f} ms, "
          f"p95 {_pct(heavy_ms, 95):.0f} ms")
    for kind_code, count in sorted(heavy_codes.items()):
        print(f"  {kind_code:<40} {count}")
    health_ok = _pct(load_h, 99) <= 100
    ratio = _pct(load_p, 95) / _pct(idle_p, 95)
    search_ok = ratio <= 1.5
    print(f"health p99 under load {_pct(load_h, 99):.1f} ms (target <= 100): "
          f"{'met' if health_ok else 'NOT met'}")
    print(f"plain search p95 under load / no load = {ratio:.2f} (target <= 1.50): "
          f"{'met' if search_ok else 'NOT met'}")
    return health_ok and search_ok


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
    parser.add_argument("--expensive", action="store_true",
                        help="the overload scenario (see above); own server only")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.expensive:
        keys: list[Keys] = []
        with own_server(args.products, args.max_queue, keys) as (addr, _, photos):
            met = asyncio.run(run_expensive(addr, keys[0], photos, args.clients, args.seconds,
                                            max(args.deadline, 10.0)))
        return 0 if met else 1
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
