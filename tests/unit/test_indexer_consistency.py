"""The indexer against a real SQLite catalog and qdrant-edge store (fast deterministic encoder):
whatever sequence of catalog writes lands in one drain batch, the product's points afterwards
are the product as SQL has it, and an outbox row is marked done only when they are."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.app import ensure_collection
from backend.config import load_settings
from backend.domain.indexing import Indexer
from backend.domain.reconcile import Reconciler
from backend.domain.selfcheck import SelfCheck, SliceReport
from backend.domain.types import Filters, ProductInput, StockLevel
from backend.errors import NotFound
from backend.stores.catalog import migrate
from backend.stores.catalog.db import make_engine
from backend.stores.catalog.repository import CatalogRepository, InventoryChange
from backend.stores.vectors.base import VectorPoint
from backend.stores.vectors.edge import EdgeVectorStore
from tests.fakes import FAKE_VERSION, FakeEncoder


@dataclass
class Env:
    catalog: CatalogRepository
    vectors: EdgeVectorStore
    encoder: FakeEncoder
    indexer: Indexer
    reconciler: Reconciler
    collection: str
    images: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One catalog and store for the module (creating a shard takes seconds); each test
    uses its own SKUs and leaves nothing pending."""
    tmp_path = tmp_path_factory.mktemp("indexer")
    settings = load_settings(data_dir=tmp_path / "data")
    settings.data_dir.mkdir()
    migrate.upgrade(settings.sql_url)
    engine = make_engine(settings.sql_url)
    vectors = EdgeVectorStore(settings.vectors_dir)
    encoder = FakeEncoder(delay_s=0)
    try:
        catalog = CatalogRepository(engine)
        ensure_collection(vectors, settings, encoder)  # type: ignore[arg-type]
        indexer = Indexer(catalog, vectors, encoder, settings.collection)  # type: ignore[arg-type]
        images = tmp_path / "images"
        images.mkdir()
        yield Env(catalog, vectors, encoder, indexer,
                  Reconciler(catalog, vectors, settings.collection, FAKE_VERSION),
                  vectors.resolve(settings.collection), images)
    finally:
        vectors.close()
        engine.dispose()


def _image(env: Env, name: str, colour: tuple[int, int, int]) -> str:
    path = env.images / f"{name}.png"
    Image.new("RGB", (16, 16), colour).save(path)
    return str(path)


def _product(env: Env, sku: str, title: str, n: int = 0) -> ProductInput:
    return ProductInput(sku=sku, merchant="m1", title=title, category="cat/a", price=10.0,
                        images=[_image(env, f"{sku}-{n}", (n * 40 % 256, 10, 200))],
                        inventory=[StockLevel("w1", "A", 3, 1)])


def _assert_indexed(env: Env, sku: str, product_id: str) -> None:
    """The product is in the index exactly as SQL has it, and nothing is pending."""
    assert env.catalog.pending_count() == 0
    assert env.catalog.indexed_version() == env.catalog.catalog_version()
    product = env.catalog.find_by_sku("m1", sku)
    if product is None:
        assert env.vectors.get_vectors(env.collection, product_id, "text") == []
        return
    assert product.product_id == product_id
    text = env.encoder._vector(product.text_for_encoding().encode())
    stored = env.vectors.get_vectors(env.collection, product_id, "text")
    # One point per image, encoded from the current text.
    assert [pos for pos, _ in stored] == [ref.position for ref in product.images]
    assert all(np.allclose(vec, text, atol=1e-5) for _, vec in stored)
    # Found by its text, with the payload of its current catalog version.
    hits = env.vectors.search(env.collection, "text", text, Filters(), limit=1)
    assert hits[0].payload.product_id == product_id
    assert hits[0].payload.catalog_version == product.catalog_version
    assert hits[0].payload.in_stock == product.in_stock
    assert hits[0].payload.price == pytest.approx(product.price)


def test_upsert_then_inventory_update_in_one_batch_is_encoded(env: Env) -> None:
    """Issue 12 defect 1: the inventory update's 'payload' row used to hide the upsert, so
    the product was never encoded while both rows were marked done."""
    env.catalog.upsert_products([_product(env, f"BG-{i}", f"background item {i}")
                                 for i in range(8)])
    env.indexer.drain()
    (outcome,) = env.catalog.upsert_products([_product(env, "P", "bright yellow raincoat")])
    _, version = env.catalog.update_inventory(
        [InventoryChange(outcome.product_id, warehouse="w1", bin="A", quantity=0)])
    stats = env.indexer.drain_once(64)
    assert stats.rows == 2
    assert env.catalog.indexed_version() >= version
    _assert_indexed(env, "P", outcome.product_id)
    report = env.reconciler.check()
    assert report.differences == 0, report.summary()


# Every order of up to three writes to one product that land in one batch, starting from a
# product already indexed or one that does not exist yet.
OPS = ("upsert", "new_image", "inventory", "delete")
SEQUENCES = [seq for n in (1, 2) for seq in itertools.product(OPS, repeat=n)] + list(
    itertools.product(("upsert", "inventory", "delete"), repeat=3))


@pytest.mark.parametrize("indexed_first", [True, False], ids=["indexed", "new"])
def test_every_op_order_in_one_batch_ends_as_sql(env: Env, indexed_first: bool) -> None:
    for number, seq in enumerate(SEQUENCES):
        sku = f"S{int(indexed_first)}-{number}-"
        (first,) = env.catalog.upsert_products([_product(env, sku, f"item {sku} v0")])
        if indexed_first:
            env.indexer.drain()
        for step, op in enumerate(seq, start=1):
            found = env.catalog.find_by_sku("m1", sku)
            if op == "delete":
                if found is not None:
                    env.catalog.delete_products([found.product_id])
            elif op == "inventory":
                if found is None:
                    with pytest.raises(NotFound):
                        env.catalog.update_inventory([InventoryChange("no-such-id", price=1.0)])
                    continue
                env.catalog.update_inventory(
                    [InventoryChange(found.product_id, price=20.0 + step, warehouse="w1",
                                     bin="A", quantity=step % 2)])
            else:
                title = f"item {sku} v{step}"
                env.catalog.upsert_products(
                    [_product(env, sku, title, n=step if op == "new_image" else 0)])
        stats = env.indexer.drain_once(64)
        assert stats.done == stats.rows, (seq, stats)
        _assert_indexed(env, sku, first.product_id)


class _DroppingStore:
    """A vector store that silently loses the next `drops` upserts (a store that acknowledged
    a write it did not keep)."""

    def __init__(self, inner: EdgeVectorStore, drops: int) -> None:
        self._inner = inner
        self.drops = drops

    def upsert(self, collection: str, points: list[VectorPoint]) -> None:
        if self.drops > 0:
            self.drops -= 1
            return
        self._inner.upsert(collection, points)

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def test_rows_stay_pending_until_the_points_are_there(env: Env) -> None:
    store = _DroppingStore(env.vectors, drops=1)
    indexer = Indexer(env.catalog, store, env.encoder, "products")  # type: ignore[arg-type]
    (outcome,) = env.catalog.upsert_products([_product(env, "LOST", "lost write item")])
    stats = indexer.drain_once(64)
    assert stats.done == 0 and stats.unverified_products == 1
    # Read-your-writes must not call it indexed.
    assert env.catalog.indexed_version() < outcome.catalog_version
    assert env.catalog.pending_count() == 1
    stats = indexer.drain_once(64)
    assert stats.done == 1
    _assert_indexed(env, "LOST", outcome.product_id)


def test_payload_update_of_a_product_without_points_encodes_it(env: Env) -> None:
    (outcome,) = env.catalog.upsert_products([_product(env, "GAP", "never written item")])
    env.catalog.mark_done([item.id for item in env.catalog.claim_outbox(10)])  # lost upsert
    env.catalog.update_inventory([InventoryChange(outcome.product_id, price=5.0)])
    stats = env.indexer.drain_once(64)
    assert stats.done == 1 and stats.upserted_products == 1
    _assert_indexed(env, "GAP", outcome.product_id)


def test_a_write_during_the_pass_is_not_reported_indexed(env: Env) -> None:
    """SQL changing between the read and the write-back: the rows of the state that was
    written may be done (the newer change is pending), but read-your-writes must not count
    the newer change, and the next pass writes it."""
    (outcome,) = env.catalog.upsert_products([_product(env, "RACE", "racing item v1")])
    encode_many = env.encoder.encode_many
    raced: list[int] = []

    def encode_and_race(images, texts):  # type: ignore[no-untyped-def]
        if not raced:
            (newer,) = env.catalog.upsert_products(
                [_product(env, "RACE", "racing item v2", n=1)])
            raced.append(newer.catalog_version)
        return encode_many(images, texts)

    env.encoder.encode_many = encode_and_race  # type: ignore[method-assign]
    try:
        stats = env.indexer.drain_once(64)
    finally:
        env.encoder.encode_many = encode_many  # type: ignore[method-assign]
    assert stats.done == 1 and env.catalog.pending_count() == 1
    assert env.catalog.indexed_version() == raced[0] - 1
    env.indexer.drain()
    _assert_indexed(env, "RACE", outcome.product_id)
    assert env.catalog.get_product(outcome.product_id).title == "racing item v2"


def test_points_behind_sql_with_nothing_pending_stay_pending(env: Env) -> None:
    """Points that match an older state while SQL moved on and no newer row is pending (a
    second drainer finished the newer change first): never marked done."""
    (outcome,) = env.catalog.upsert_products([_product(env, "BEHIND", "behind item v1")])
    encode_many = env.encoder.encode_many

    def encode_and_overtake(images, texts):  # type: ignore[no-untyped-def]
        env.encoder.encode_many = encode_many  # type: ignore[method-assign]
        env.catalog.upsert_products([_product(env, "BEHIND", "behind item v2")])
        env.indexer.drain_once(64)  # the other drainer: writes v2, marks both rows done
        return encode_many(images, texts)

    other = env.indexer
    env.indexer = Indexer(env.catalog, env.vectors, env.encoder, "products")  # type: ignore
    try:
        env.encoder.encode_many = encode_and_overtake  # type: ignore[method-assign]
        stats = other.drain_once(64)
    finally:
        env.indexer = other
    assert stats.done == 0 and stats.unverified_products == 1
    # v1's points overwrote v2's: the self-check is what finds and repairs this.
    check = SelfCheck(env.catalog, env.vectors, env.indexer, "products", FAKE_VERSION)
    found = 0
    while True:
        report = check.run_slice()
        found += report.drift_found
        if report.round_done:
            break
    assert found >= 1
    _assert_indexed(env, "BEHIND", outcome.product_id)


def test_self_check_slices_are_bounded_and_cover_everything(env: Env) -> None:
    outcomes = env.catalog.upsert_products(
        [_product(env, f"SC-{i}", f"self check item {i}") for i in range(12)])
    env.indexer.drain()
    live = sum(len(page) for page in env.catalog.iter_products())
    check = SelfCheck(env.catalog, env.vectors, env.indexer, "products", FAKE_VERSION,
                      batch=4)
    victim = outcomes[7].product_id
    env.vectors.delete_products(env.collection, [victim])  # lost behind the indexer's back
    slices: list[SliceReport] = []
    while not slices or not slices[-1].round_done:
        slices.append(check.run_slice())
        assert slices[-1].products <= 2 * 4
        assert len(slices) <= live // 4 + 2, "a round must end"
    assert sum(r.found["missing"] for r in slices) == 1
    assert sum(r.repaired["missing"] for r in slices) == 1
    assert sum(r.drift_found for r in slices) == 1
    _assert_indexed(env, "SC-7", victim)
