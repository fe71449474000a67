"""Reindex on the embedded store: build a new collection in-process (the process that owns the
shard directory) while clients search over gRPC, switch the pointer, drop the old collection;
not one request fails. Also: a collection of another model version is refused at start
(server store) or rebuilt automatically (embedded default)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from backend.app import build_app, ensure_collection
from backend.config import load_settings
from backend.demo import photo_of
from backend.domain.reconcile import Reconciler
from backend.domain.reindex import (
    ModelVersionMismatch,
    Reindexer,
    built_by,
    physical_name,
    safe_version,
)
from backend.domain.types import ProductInput
from backend.stores.vectors.edge import EdgeVectorStore
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from tests.fakes import FakeEncoder
from tests.integration.conftest import Running


def test_physical_names_carry_the_model_version() -> None:
    assert physical_name("products", "effl0+use-m3.v1") == "products__effl0_use_m3_v1"
    taken = ["products__effl0_use_m3_v1", "products__effl0_use_m3_v1-r2"]
    assert physical_name("products", "effl0+use-m3.v1", taken) == "products__effl0_use_m3_v1-r3"
    assert built_by("products", "products__effl0_use_m3_v1-r3") == "effl0_use_m3_v1"
    assert built_by("products", "legacy") is None


def test_reindex_while_searching_fails_no_request(running: Running) -> None:
    app = running.app
    alias = app.settings.collection
    old = app.vectors.resolve(alias)
    photos = [photo_of(Path(str(item["images"][0])), seed=n)  # type: ignore[index]
              for n, item in enumerate(running.catalog[:4])]
    texts = [str(item["title"]) for item in running.catalog[:4]]
    stop = threading.Event()
    ok: list[int] = []
    failures: list[str] = []
    seen_collections: set[str] = set()

    def searcher(n: int) -> None:
        channel = grpc.insecure_channel(running.addr)
        from backend.transport.grpc.generated.product_search.v1 import (
            product_search_pb2_grpc as rpc,
        )

        stub = rpc.ProductSearchStub(channel)
        i = 0
        try:
            while not stop.is_set():
                if (i + n) % 2:
                    request = pb.SearchRequest(image=photos[i % len(photos)], top_k=5)
                else:
                    request = pb.SearchRequest(text=texts[i % len(texts)], top_k=5)
                try:
                    reply = stub.Search(request, timeout=60)
                    assert reply.hits, "empty result"
                    ok.append(1)
                except (grpc.RpcError, AssertionError) as exc:
                    failures.append(repr(exc))
                seen_collections.add(app.vectors.resolve(alias))
                i += 1
        finally:
            channel.close()

    # A catalog write during the build: replayed into the new collection before the switch.
    item = running.catalog[7]
    product = app.catalog.find_by_sku(str(item["merchant"]), str(item["sku"]))
    assert product is not None

    def writer() -> None:
        time.sleep(1.0)
        running.writes.UpdateInventory(pb.UpdateInventoryRequest(updates=[pb.InventoryUpdate(
            product_id=product.product_id, warehouse="reindex", bin="R-1", quantity=9)]),
            timeout=30)

    threads = [threading.Thread(target=searcher, args=(n,)) for n in range(3)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    try:
        reindexer = Reindexer(app.catalog, app.vectors, app.encoder, alias, batch=16)
        # Same model: a rebuild into `<name>-r2`, checked against the current collection.
        result = reindexer.run(margin=0.1, sample=20, grace_s=1.5)
        time.sleep(1.0)  # searches on the new collection after the old one is gone
    finally:
        stop.set()
        for t in threads:
            t.join(120)

    assert result.switched, result.message
    assert result.old == old and result.new != old and result.dropped_old
    assert result.old_quality is not None and result.new_quality is not None
    # Same model, same catalog: the rebuilt collection retrieves as well as the current one.
    assert result.new_quality.photo_recall_at_1 >= 0.4
    assert result.new_quality.drop_from(result.old_quality) <= 0.1
    assert app.vectors.resolve(alias) == result.new
    assert old not in app.vectors.list_collections()
    assert failures == [], failures[:5]
    assert len(ok) >= 10
    assert seen_collections >= {old, result.new}
    # Nothing lost: the new collection agrees with SQL, the write made during the build too.
    app.indexer.drain()
    report = Reconciler(app.catalog, app.vectors, alias, app.encoder.model_version).check()
    assert report.differences == 0, report.summary()


def test_refused_switch_keeps_the_current_collection(running: Running) -> None:
    app = running.app
    alias = app.settings.collection
    current = app.vectors.resolve(alias)
    reindexer = Reindexer(app.catalog, app.vectors, app.encoder, alias, batch=16)
    # A margin below zero: any result counts as a drop, so the switch is refused.
    result = reindexer.run(margin=-1.0, sample=5, grace_s=0)
    assert not result.switched and "refused" in result.message
    assert app.vectors.resolve(alias) == current
    assert result.new not in app.vectors.list_collections()


# ------------------------------------------------------------------ model version on start

DIM = 8


def _product(n: int) -> ProductInput:
    return ProductInput(sku=f"S{n}", merchant="m", title=f"thing {n}", category="c/d",
                        price=1.0 + n)


def test_other_model_version_is_refused_or_rebuilt(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, auth={"enabled": False})
    app = build_app(settings, FakeEncoder("tiny-a", DIM))
    app.catalog.upsert_products([_product(n) for n in range(5)])
    app.indexer.drain()
    assert app.vectors.resolve("products") == "products__tiny_a"
    app.close()

    # Refused where the store cannot be rebuilt in-process (a server deployment).
    with pytest.raises(ModelVersionMismatch, match="prodsearch reindex"):
        build_app(settings, FakeEncoder("tiny-b", 12), auto_reindex=False)
    store = EdgeVectorStore(settings.vectors_dir)
    try:
        with pytest.raises(ModelVersionMismatch):
            ensure_collection(store, settings, FakeEncoder("tiny-b", 12))  # type: ignore[arg-type]
    finally:
        store.close()

    # The embedded default rebuilds for the new model by itself.
    app = build_app(settings, FakeEncoder("tiny-b", 12))
    try:
        assert app.vectors.resolve("products") == "products__tiny_b"
        assert app.vectors.count("products") == 5
        report = Reconciler(app.catalog, app.vectors, "products",
                            app.encoder.model_version).check()
        assert report.differences == 0, report.summary()
        assert safe_version("tiny-b") == "tiny_b"
    finally:
        app.close()
