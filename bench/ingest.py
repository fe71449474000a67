"""Ingest: products/s end to end (catalog write + outbox + indexer: load image, encode,
upsert into qdrant-edge) vs the encoder alone on the same images and texts; then the same
files ingested again as new products with the text encoder on fixed threads (before) and
on the batch-size policy (after), alternating chunk by chunk.

    .venv/bin/python -m bench.ingest [--n 256] [--runtime onnx|torch]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from backend.app import App
from backend.domain.types import ProductInput, StockLevel
from bench._app import make_app
from bench._common import machine, table
from encoders.preprocess import load_image_file
from encoders.threads import ThreadPolicy, usable_cpus

CLIPART = Path("/usr/share/openclipart/png")


def compare_text_threads(app: App, files: list[str], n: int, chunk: int = 32) -> None:
    """End-to-end ingest with the text encoder on a fixed min(4, CPUs) threads (the path
    before encoders/threads.py) and on the batch-size policy, alternating chunk by chunk
    over the same files as new products, so load swings hit both alike."""
    text = app.encoder.encoder.text  # type: ignore[attr-defined]
    policy = text.policy
    fixed = ThreadPolicy(max_threads=min(4, usable_cpus()), bulk_batch=1)
    spent = {"before (fixed threads)": 0.0, "after (policy)": 0.0}
    done = dict.fromkeys(spent, 0)
    for k, start in enumerate(range(0, n, chunk)):
        mode = list(spent)[k % 2]
        text.policy = fixed if k % 2 == 0 else policy
        batch = [ProductInput(sku=f"t{i}", merchant="m2", title=Path(f).stem.replace("_", " "),
                              category=Path(f).parent.name, price=10.0, images=[f],
                              inventory=[StockLevel("w1", "a", 3)])
                 for i, f in enumerate(files[start:start + chunk], start)]
        t = time.perf_counter()
        app.catalog_service.upsert(batch)
        app.indexer.drain(app.settings.indexer_batch)
        spent[mode] += time.perf_counter() - t
        done[mode] += len(batch)
    text.policy = policy
    base = done["before (fixed threads)"] / spent["before (fixed threads)"]
    print(table(["text encoder threads", "products", "products/s", "ratio"], [
        [mode, done[mode], done[mode] / spent[mode], f"{done[mode] / spent[mode] / base:.2f}"]
        for mode in spent]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--runtime", default="onnx", choices=["onnx", "torch"])
    args = ap.parse_args()
    files = sorted(str(p) for p in CLIPART.rglob("*.png"))[: args.n]
    if len(files) < args.n:
        raise SystemExit(f"need {args.n} images under {CLIPART} (apt install openclipart-png)")
    root = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    print(f"# ingest, {args.n} products x 1 image, runtime {args.runtime}\n{machine()}\n")
    app = make_app(root, image_roots=[CLIPART], runtime=args.runtime)
    try:
        app.encoder.start()
        items = [ProductInput(sku=f"s{i}", merchant="m", title=Path(f).stem.replace("_", " "),
                              category=Path(f).parent.name, price=10.0, images=[f],
                              inventory=[StockLevel("w1", "a", 3)])
                 for i, f in enumerate(files)]
        texts = []
        # Encoder alone: decode + encode the same images and texts, batch by batch.
        t = time.perf_counter()
        images = [load_image_file(f) for f in files]
        for it in items:
            texts.append(it.title + " . " + it.category)
        app.encoder.encode_many(images, texts)
        enc_rate = args.n / (time.perf_counter() - t)
        # End to end: catalog write (with outbox), then the indexer drains it.
        t = time.perf_counter()
        app.catalog_service.upsert(items)
        app.indexer.drain(app.settings.indexer_batch)
        e2e_rate = args.n / (time.perf_counter() - t)
        count = app.vectors.count(app.settings.collection)
        assert count >= args.n, count
        print(table(["path", "products/s", "ratio"], [
            ["encoder alone (decode + encode_many)", enc_rate, "1.00"],
            ["end to end (catalog + outbox + indexer + qdrant-edge)", e2e_rate,
             f"{e2e_rate / enc_rate:.2f}"]]))
        print("target: end to end >= 90% of encoder throughput")
        compare_text_threads(app, files, args.n)
    finally:
        app.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
