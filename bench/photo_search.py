"""Photo query latency end to end over gRPC at catalog scale: the photo path on local features
(descriptor vote over the FAISS descriptor index beside the dense views fused in
qdrant-edge, verification on the votes, calibrated score)
beside today's photo path (dense image vectors only), in the same run, on the same server
process, the same index and the same photos, queries alternating between the two. Also
reports Recall@1 on those photos, ingest throughput and index size per product.

Queries are single catalog items photographed among clutter that is not in the catalog (the
SHELF rendering: small, off-centre, perspective, coloured light, blur, JPEG).

    .venv/bin/python -m bench.photo_search                    # 8,101 items, 200 queries
    .venv/bin/python -m bench.photo_search --products 2000 --queries 100

The index is built once into --cache (default ~/.cache/prodsearch/bench-photo-<N>) with a
progress bar and reused by later runs while the code's model and feature versions match; the
ingest figures of the build are stored beside it and reported with the build's date.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from pathlib import Path

import grpc
from PIL import Image
from tqdm import tqdm

from bench._common import machine, pct, table

TARGET_P95_MS = 250.0
CLUTTER_DIR = Path("/usr/share/icons/oxygen/base/256x256")


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build(data_dir: Path, products: int) -> dict[str, object]:
    """Catalog + index of `products` openclipart items; returns the ingest figures."""
    from backend.app import build_app
    from backend.demo_catalog import OPENCLIPART_DIR, build_catalog, pick_images, write_catalog
    from backend.domain.ingest import ingest_file
    from bench._app import settings

    catalog = build_catalog(pick_images(OPENCLIPART_DIR, products, seed=7), OPENCLIPART_DIR)
    write_catalog(catalog, data_dir / "catalog.jsonl")
    app = build_app(settings(data_dir))
    try:
        ingest_file(data_dir / "catalog.jsonl", app.catalog)
        app.encoder.start()
        started = time.perf_counter()
        feature_bytes = 0
        with tqdm(total=app.catalog.pending_count(), desc="index", unit="product") as bar:
            while True:
                stats = app.indexer.drain_once(app.settings.indexer_batch)
                if stats.rows == 0:
                    break
                feature_bytes += stats.feature_bytes
                bar.update(stats.rows)
        seconds = time.perf_counter() - started
        app.vectors.build_index(app.vectors.resolve(app.settings.collection))
        return {"products": len(catalog), "index_seconds": round(seconds, 1),
                "products_per_s": round(len(catalog) / seconds, 2),
                "built": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "model_version": app.encoder.model_version,
                "features_version": app.photo.version if app.photo else ""}
    finally:
        app.close()


def queries(catalog: list[dict[str, object]], n: int, seed: int = 1
            ) -> list[tuple[str, bytes]]:
    """(sku, JPEG) photos of catalog items among clutter from images not in the catalog."""
    from backend.demo_catalog import OPENCLIPART_DIR
    from encoders.evaluation.photos import SHELF, photo_jpeg, render_photo

    # Real icons (Debian oxygen-icon-theme, as the shelf evaluation uses), else the
    # openclipart images the catalog does not hold.
    paths = sorted(CLUTTER_DIR.rglob("*.png"))[::7] if CLUTTER_DIR.is_dir() else [
        p for p in sorted(OPENCLIPART_DIR.rglob("*.png"))
        if str(p) not in {str(e["images"][0]) for e in catalog}]  # type: ignore[index]
    clutter = []
    for path in paths[:300]:
        try:
            with Image.open(path) as im:
                im.thumbnail((512, 512))
                clutter.append(im.convert("RGBA"))
        except (OSError, Image.DecompressionBombError):
            continue
    rng = random.Random(seed)
    out = []
    for entry in rng.sample(catalog, min(n, len(catalog))):
        with Image.open(str(entry["images"][0])) as item:  # type: ignore[index]
            photo, _ = render_photo(item, rng, SHELF, clutter)
        out.append((str(entry["sku"]), photo_jpeg(photo)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=8101)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()

    from backend.app import build_app
    from backend.domain.search import SearchService
    from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
    from backend.transport.grpc.generated.product_search.v1 import (
        product_search_pb2_grpc as rpc,
    )
    from backend.transport.grpc.server import BackgroundServer
    from bench._app import settings

    data_dir = args.cache or Path.home() / ".cache" / "prodsearch" / \
        f"bench-photo-{args.products}"
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"# photo search, {args.products:,} products, {args.queries} queries\n{machine()}\n")
    marker = data_dir / "build.json"
    app = build_app(settings(data_dir).model_copy(update={"indexer_enabled": False})) \
        if marker.is_file() else None
    built = json.loads(marker.read_text()) if marker.is_file() else {}
    if app is not None and (built.get("model_version") != app.encoder.model_version or
                            built.get("features_version") != (app.photo.version if app.photo
                                                              else "")):
        print("cached index was built by other model/feature versions: rebuilding")
        app.close()
        app, built = None, {}
    if app is None:
        built = build(data_dir, args.products)
        marker.write_text(json.dumps(built, indent=2) + "\n")
        app = build_app(settings(data_dir).model_copy(update={"indexer_enabled": False}))
    assert app.photo is not None, "local features are switched off in the settings"
    catalog = [json.loads(line) for line in
               (data_dir / "catalog.jsonl").read_text(encoding="utf-8").splitlines()]
    photos = queries(catalog, args.queries)

    # Today's photo path: the same app and index, searching the dense vectors alone.
    baseline = dataclasses.replace(app, search=SearchService(
        app.catalog, app.vectors, app.encoder, app.settings.collection, app.settings.search))
    servers = {"local features": BackgroundServer(app), "dense only (today)":
               BackgroundServer(baseline)}
    addrs = {name: s.start() for name, s in servers.items()}
    stubs = {name: rpc.ProductSearchStub(grpc.insecure_channel(addr))
             for name, addr in addrs.items()}
    times: dict[str, list[float]] = {name: [] for name in stubs}
    firsts: dict[str, int] = dict.fromkeys(stubs, 0)
    try:
        for stub in stubs.values():  # warm-up
            for _, jpeg in photos[:3]:
                stub.Search(pb.SearchRequest(image=jpeg, top_k=10), timeout=60)
        for sku, jpeg in tqdm(photos, desc="queries", unit="photo"):
            for name, stub in stubs.items():  # alternating: both see the same load
                t = time.perf_counter()
                response = stub.Search(pb.SearchRequest(image=jpeg, top_k=10), timeout=60)
                times[name].append(time.perf_counter() - t)
                firsts[name] += bool(response.hits) and response.hits[0].product.sku == sku
    finally:
        for s in servers.values():
            s.stop(grace=0.5)

    collection = app.vectors.resolve(app.settings.collection)
    feature_bytes = app.photo.store.size_bytes(collection)
    descriptors = app.photo.descriptors(collection)
    app.photo.snapshot(collection)
    snapshot_bytes = _dir_bytes(app.photo.store.root / collection / ".descriptors")
    vector_bytes = _dir_bytes(app.settings.vectors_dir / collection)
    n = int(built["products"])
    app.close()
    base = "dense only (today)"
    rows = [[name, pct(t, 50), pct(t, 95), pct(t, 95) / pct(times[base], 95),
             firsts[name] / len(photos)] for name, t in times.items()]
    print(table(["photo path", "p50 ms", "p95 ms", "p95 / today", "Recall@1"], rows))
    p95 = pct(times["local features"], 95)
    print(f"\ntarget p95 <= {TARGET_P95_MS:.0f} ms: {'met' if p95 <= TARGET_P95_MS else 'NOT met'}"
          f" ({p95:.0f} ms)")
    print(f"\ningest (index build of {built['built']}): {built['products_per_s']} products/s "
          f"({n:,} products in {built['index_seconds']} s: load image, encode, extract local "
          "features, visual words, write files, upsert)")
    print(table(["index part", "total MiB", "KiB per product"], [
        ["local-feature files", feature_bytes / 2**20, feature_bytes / 1024 / n],
        ["vector store (dense + visual words + payload)", vector_bytes / 2**20,
         vector_bytes / 1024 / n],
        [f"descriptor index snapshot ({descriptors.descriptors:,} descriptors; held in "
         "memory by each search process)", snapshot_bytes / 2**20, snapshot_bytes / 1024 / n],
    ]))


if __name__ == "__main__":
    main()
