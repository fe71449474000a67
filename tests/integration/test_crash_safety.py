"""Crash safety of ingest + the outbox indexer: `prodsearch ingest` runs in a subprocess and is
SIGKILLed at random moments (in the SQL write, in encoding, in writing the local-feature
files, in the vector upsert), at least 10 times, then run to the end. Every acknowledged
product must be in SQL and in the vector store exactly once with the current model version,
nothing half-written may be searchable, every image point must have its local features
after every crash, and `prodsearch reconcile` (which checks the feature files too) must
report 0 differences.

The child runs the real command (`backend.cli.main(["ingest", ...])`): real SQLite catalog,
outbox, indexer and qdrant-edge store. Only the encoder is replaced by a fast deterministic
one (a few ms per item), so that a run takes seconds instead of minutes of CPU inference;
encoding is still a separate phase between the SQL write and the vector upsert.
Run as `python -m tests.integration.test_crash_safety child|reconcile DATA_DIR [FILE]`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from backend.stores.vectors.base import PointPayload
from tests.fakes import FAKE_VERSION, FakeEncoder

N_PRODUCTS = 300
MIN_KILLS = 10
PHASES = ("sql", "encode", "features", "upsert")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _child(command: str, data_dir: str, file: str = "") -> int:
    """Runs in the subprocess: the real CLI, with the fast encoder and phase markers."""
    import backend.app
    from backend import cli
    from backend.stores.catalog.repository import CatalogRepository
    from backend.stores.features import FeatureStore
    from backend.stores.vectors.edge import EdgeVectorStore

    backend.app.make_encoder = lambda settings: FakeEncoder(  # type: ignore
        delay_s=0.003, before_batch=lambda: _say("phase encode"))
    upsert_products = CatalogRepository.upsert_products

    def upsert_announced(self: CatalogRepository, items: list) -> list:  # type: ignore[type-arg]
        _say("phase sql")
        outcomes = upsert_products(self, items)
        _say("ack " + json.dumps([i.sku for i in items]))  # committed: acknowledged
        return outcomes

    vector_upsert = EdgeVectorStore.upsert

    def vector_upsert_announced(self: EdgeVectorStore, collection: str, points: list
                                ) -> None:  # type: ignore[type-arg]
        _say("phase upsert")
        vector_upsert(self, collection, points)

    put_many = FeatureStore.put_many

    def put_many_announced(self: FeatureStore, collection: str, items: list
                           ) -> int:  # type: ignore[type-arg]
        _say("phase features")
        return put_many(self, collection, items)

    FeatureStore.put_many = put_many_announced  # type: ignore[method-assign]
    CatalogRepository.upsert_products = upsert_announced  # type: ignore[method-assign]
    EdgeVectorStore.upsert = vector_upsert_announced  # type: ignore[method-assign]
    name = {"child": "ingest", "reconcile": "reconcile"}[command]
    # Ingest's match calibration afterwards is not what this test kills.
    args = [name, "--data-dir", data_dir] + ([file, "--no-calibrate"] if file else [])
    return cli.main(args)


def make_catalog(root: Path, n: int) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    lines = []
    for i in range(n):
        path = images / f"p{i}.png"
        # Textured, so that every image has local features to store.
        pixels = np.random.default_rng(i).integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((96, 96), Image.Resampling.NEAREST).save(path)
        lines.append(json.dumps({
            "sku": f"CS-{i:04d}", "merchant": f"m{i % 3}", "title": f"crash test item {i}",
            "description": "", "category": f"crash/c{i % 5}", "brand": "b", "size": "M",
            "material": "wool", "colour": "red", "price": 1 + i % 50, "currency": "EUR",
            "images": [str(path)],
            "inventory": [{"warehouse": "w1", "bin": "A", "quantity": i % 4,
                           "reorder_point": 1}]}))
    file = root / "catalog.jsonl"
    file.write_text("\n".join(lines) + "\n")
    return file


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONUNBUFFERED": "1", "PRODSEARCH_INDEXER_BATCH": "32",
                "PRODSEARCH_LOG_LEVEL": "WARNING"})
    env.pop("PRODSEARCH_DATABASE_URL", None)
    env.pop("PRODSEARCH_QDRANT_URL", None)
    return env


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.test_crash_safety", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(),
        cwd=Path(__file__).resolve().parents[2])


def _live_products(data_dir: Path) -> dict[str, str]:
    """sku -> product id of every committed, live product."""
    from backend.stores.catalog.db import make_engine
    from backend.stores.catalog.repository import CatalogRepository

    engine = make_engine(f"sqlite:///{(data_dir / 'catalog.sqlite3').resolve()}")
    try:
        repo = CatalogRepository(engine)
        return {p.sku: p.product_id for page in repo.iter_products() for p in page}
    finally:
        engine.dispose()


def _points(data_dir: Path) -> list[tuple[str, PointPayload]]:
    from backend.stores.vectors.edge import EdgeVectorStore

    if not (data_dir / "vectors").exists():
        return []
    store = EdgeVectorStore(data_dir / "vectors")
    try:
        if "products" not in store.list_collections() and store.resolve("products") == \
                "products":
            return []
        return list(store.scroll_payloads(store.resolve("products")))
    finally:
        store.close()


def _points_without_features(data_dir: Path, points: list[tuple[str, PointPayload]]
                             ) -> list[str]:
    """Image points whose local-feature file is missing (the indexer writes it first)."""
    from backend.stores.features import FeatureStore

    if not points or not (data_dir / "features").is_dir():
        return [pid for pid, p in points if p.position >= 0]
    store = FeatureStore(data_dir / "features")
    collections = [c.name for c in (data_dir / "features").iterdir() if c.is_dir()]
    stored = {f.point_id for c in collections for f in store.scan(c)}
    return [pid for pid, p in points if p.position >= 0 and pid not in stored]


def test_sigkill_during_ingest_loses_nothing(tmp_path: Path) -> None:
    started = time.monotonic()
    file = make_catalog(tmp_path / "src", N_PRODUCTS)
    data_dir = tmp_path / "data"
    rng = random.Random(2024)
    acked: set[str] = set()
    kills: dict[str, int] = dict.fromkeys(PHASES, 0)
    targets = [PHASES[i % len(PHASES)] for i in range(30)]
    attempt = 0
    while sum(kills.values()) < MIN_KILLS and attempt < 25:
        target = targets[attempt]
        attempt += 1
        child = _spawn("child", str(data_dir), str(file))
        assert child.stdout is not None
        killed = False
        for line in child.stdout:
            line = line.strip()
            if line.startswith("ack "):
                acked.update(json.loads(line[4:]))
            elif line == f"phase {target}":
                time.sleep(rng.uniform(0, 0.02))
                child.send_signal(signal.SIGKILL)
                killed = True
                break
        child.wait(60)
        if killed:
            kills[target] += 1
        # After every crash: acknowledged products are durable, and every point in the vector
        # store belongs to a committed product (nothing half-written is searchable).
        live = _live_products(data_dir) if (data_dir / "catalog.sqlite3").exists() else {}
        assert acked <= set(live), sorted(acked - set(live))[:5]
        ids = set(live.values())
        points = _points(data_dir)
        orphans = [pid for pid, payload in points if payload.product_id not in ids]
        assert not orphans, orphans[:5]
        unverifiable = _points_without_features(data_dir, points)
        assert not unverifiable, unverifiable[:5]
        if not killed:
            break  # ran to the end before the target phase came
    assert sum(kills.values()) >= MIN_KILLS and all(kills.values()), kills

    final = _spawn("child", str(data_dir), str(file))
    out, _ = final.communicate(timeout=120)
    assert final.returncode == 0, out[-2000:]
    live = _live_products(data_dir)
    assert len(live) == N_PRODUCTS and acked <= set(live)
    points = _points(data_dir)
    by_product: dict[str, list[PointPayload]] = {}
    for _, payload in points:
        by_product.setdefault(payload.product_id, []).append(payload)
    assert set(by_product) == set(live.values())
    for payloads in by_product.values():  # one image each: exactly one point
        assert len(payloads) == 1
        assert payloads[0].model_version == FAKE_VERSION
        assert payloads[0].position == 0
    assert _points_without_features(data_dir, points) == []

    report = _spawn("reconcile", str(data_dir))
    out, _ = report.communicate(timeout=120)
    assert report.returncode == 0, out
    assert "0 pending" in out and ": 0 differences" in out, out
    assert time.monotonic() - started < 180, "kill test must stay under 3 minutes"


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:]))
