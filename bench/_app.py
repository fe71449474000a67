"""Shared set-up for the end-to-end benchmarks: a real App (SQLite catalog, qdrant-edge,
real encoder) in a temp dir, optionally filled with N synthetic products whose vectors are
written straight into the VectorStore (no encoding), and a gRPC server on 127.0.0.1."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from backend.app import App, build_app
from backend.config import Settings, load_settings
from backend.domain.types import ProductInput, StockLevel
from backend.stores.vectors.base import PointPayload, VectorPoint, category_prefixes, point_id

CATEGORIES = [f"cat{i:02d}/sub{j}" for i in range(10) for j in range(4)]
COLOURS = ["red", "blue", "green", "black", "white"]


def settings(data_dir: Path, image_roots: list[Path] | None = None,
             **encoder: Any) -> Settings:
    enc = {"runtime": "onnx", **encoder}
    # No self-check: it would "repair" the synthetic vectors `fill` writes (re-encoding
    # every product in the background) while the benchmark measures.
    return load_settings(data_dir=data_dir, auth={"enabled": False}, encoder=enc,
                         indexer_poll_ms=20, log_level="WARNING", selfcheck_interval_s=0,
                         images={"roots": image_roots or []})


def photo_jpeg(size: tuple[int, int] = (1600, 1200), colour: str = "red", seed: int = 0) -> bytes:
    """A phone-photo-sized JPEG of an object on a grey background."""
    rng = np.random.default_rng(seed)
    base = rng.normal(170, 12, (size[1] // 8, size[0] // 8, 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(base).resize(size)
    w, h = size
    ImageDraw.Draw(img).ellipse((w // 3, h // 3, 2 * w // 3, 2 * h // 3), fill=colour)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def product(i: int, rng: np.random.Generator, images: list[bytes] | None = None) -> ProductInput:
    cat = CATEGORIES[i % len(CATEGORIES)]
    colour = COLOURS[i % len(COLOURS)]
    return ProductInput(
        sku=f"sku-{i}", merchant=f"m{i % 7}", title=f"{colour} item {i} from {cat}",
        description=f"a {colour} product number {i}", category=cat, brand=f"b{i % 11}",
        size=["S", "M", "L"][i % 3], material="cotton", colour=colour,
        price=float(rng.uniform(1, 200)), image_bytes=images or [],
        inventory=[StockLevel("w1", "a1", int(rng.random() < 0.7) * 5, 1)],
    )


def fill(app: App, n: int, seed: int = 0, chunk: int = 2000) -> float:
    """N products in the catalog (outbox marked done) with synthetic unit vectors for every
    named vector the encoder produces, written straight into the vector store."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    dims = app.encoder.dims
    version = app.encoder.model_version
    coll = app.settings.collection
    centres = {name: rng.standard_normal((256, d)).astype(np.float32)
               for name, d in dims.items()}
    for s in range(0, n, chunk):
        items = [product(i, rng) for i in range(s, min(n, s + chunk))]
        outcomes = app.catalog.upsert_products(items)
        ids = [o.product_id for o in outcomes]
        while True:
            claimed = app.catalog.claim_outbox(5000)
            if not claimed:
                break
            app.catalog.mark_done([c.id for c in claimed])
        points = []
        prods = app.catalog.get_products(ids)
        for pid in ids:
            p = prods[pid]
            vecs = {}
            for name, d in dims.items():
                v = centres[name][rng.integers(0, 256)] + 0.7 * rng.standard_normal(
                    d, dtype=np.float32)
                vecs[name] = (v / np.linalg.norm(v)).astype(np.float32)
            payload = PointPayload(
                product_id=pid, position=-1, model_version=version,
                catalog_version=p.catalog_version, merchant=p.merchant,
                category=category_prefixes(p.category), size=p.size, material=p.material,
                colour=p.colour, brand=p.brand, price=p.price, in_stock=p.in_stock,
                listed=p.listed)
            points.append(VectorPoint(point_id(pid, -1, version), vecs, payload))
        app.vectors.upsert(coll, points)
    app.vectors.build_index(coll)
    return time.perf_counter() - start


def make_app(data_dir: Path, image_roots: list[Path] | None = None, **encoder: Any) -> App:
    """`image_roots`: folders catalog image paths may point into (server-side paths)."""
    return build_app(settings(data_dir, image_roots, **encoder))
