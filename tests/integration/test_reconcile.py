"""`Reconciler` against a real SQLite catalog and qdrant-edge store: each kind of difference
is found and repaired, and products still in the outbox are not reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backend.app import ensure_collection
from backend.config import load_settings
from backend.domain.indexing import Indexer
from backend.domain.ingest import ingest_file
from backend.domain.payload import product_payload
from backend.domain.reconcile import Reconciler
from backend.domain.types import Product
from backend.stores.catalog import migrate
from backend.stores.catalog.db import make_engine
from backend.stores.catalog.repository import CatalogRepository, InventoryChange
from backend.stores.vectors.base import PayloadPatch, PointPayload, VectorPoint, point_id
from backend.stores.vectors.edge import EdgeVectorStore
from tests.fakes import FAKE_VERSION, FakeEncoder
from tests.integration.test_crash_safety import make_catalog


def test_reconcile_finds_and_repairs_every_kind_of_difference(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    settings.data_dir.mkdir()
    migrate.upgrade(settings.sql_url)
    engine = make_engine(settings.sql_url)
    vectors = EdgeVectorStore(settings.vectors_dir)
    try:
        catalog = CatalogRepository(engine)
        encoder = FakeEncoder()
        ingest_file(make_catalog(tmp_path / "src", 12), catalog)
        ensure_collection(vectors, settings, encoder)  # type: ignore[arg-type]
        indexer = Indexer(catalog, vectors, encoder, settings.collection)  # type: ignore[arg-type]
        indexer.drain()
        reconciler = Reconciler(catalog, vectors, settings.collection, FAKE_VERSION)
        clean = reconciler.check()
        assert clean.differences == 0 and clean.products == 12 and clean.points == 12

        collection = vectors.resolve(settings.collection)
        products: list[Product] = next(catalog.iter_products())
        a, b, c, d = products[:4]
        vectors.delete_points(collection, [point_id(a.product_id, 0, FAKE_VERSION)])
        unit = np.ones(8, dtype=np.float32) / np.sqrt(8)
        vectors.upsert(collection, [
            VectorPoint(point_id(b.product_id, 0, "old-model"), {"image": unit, "text": unit},
                        product_payload(b, 0, "old-model")),
            VectorPoint(point_id("ghost", 0, FAKE_VERSION), {"image": unit, "text": unit},
                        _ghost(b)),
        ])
        vectors.set_payload(collection, [PayloadPatch(c.product_id, {"price": 999.0,
                                                                      "listed": False})])
        # A change still in the outbox is in flight, not a difference.
        catalog.update_inventory([InventoryChange(d.product_id, price=77.0)])

        found = reconciler.check()
        assert found.missing == [a.product_id]
        assert found.stale == [point_id(b.product_id, 0, "old-model")]
        assert found.orphans == [point_id("ghost", 0, FAKE_VERSION)]
        assert found.drift == [c.product_id]
        assert found.pending == 1 and found.differences == 4

        def index(coll: str, todo: list[Product]) -> None:
            indexer.index_products(coll, todo)

        after = reconciler.fix(found, index)
        assert after.differences == 0, after.summary()
        indexer.drain()
        final = reconciler.check()
        assert final.differences == 0 and final.pending == 0 and final.points == 12
        assert "0 differences" in final.summary()
    finally:
        vectors.close()
        engine.dispose()


def _ghost(template: Product) -> PointPayload:
    payload = product_payload(template, 0, FAKE_VERSION)
    payload.product_id = "ghost"
    return payload
