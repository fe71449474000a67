"""CatalogRepository on SQLite (schema from the migrations) and, where the server runs, on
PostgreSQL (marked `postgres`)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text, update

from backend.domain.types import ProductInput, StockLevel
from backend.errors import AlreadyExists, InvalidInput, NotFound
from backend.stores.catalog import migrate
from backend.stores.catalog import products as products_module
from backend.stores.catalog.db import make_engine
from backend.stores.catalog.models import Base, CatalogState, OutboxEntry, ProductRecord
from backend.stores.catalog.repository import CatalogRepository, InventoryChange


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (cheaper than migrating each time)."""
    path = tmp_path_factory.mktemp("catalog-template") / "catalog.sqlite3"
    migrate.upgrade(f"sqlite:///{path}")
    return path


def _clean_postgres(engine: Engine) -> None:
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables if t.name != "catalog_state")
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        conn.execute(update(CatalogState).values(catalog_version=0))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        path = tmp_path / "catalog.sqlite3"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        eng = make_engine(f"sqlite:///{path}")
    else:
        url: str = request.getfixturevalue("postgres_url")
        migrate.upgrade(url)  # no-op at head; the session database is shared
        eng = make_engine(url)
        _clean_postgres(eng)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def repo(engine: Engine) -> CatalogRepository:
    return CatalogRepository(engine)


def item(sku: str = "SKU-1", **kwargs: Any) -> ProductInput:
    fields: dict[str, Any] = {
        "merchant": "acme", "title": f"Product {sku}", "description": "A thing.",
        "category": "shoes/running", "brand": "Swift", "size": "42", "material": "mesh",
        "colour": "blue", "price": 59.9, "currency": "EUR",
        "images": [f"/img/{sku}-a.jpg", f"/img/{sku}-b.jpg"],
        "inventory": [StockLevel("berlin", "A1", 5, 2)],
        "attributes": {"gender": "unisex"},
    }
    fields.update(kwargs)
    return ProductInput(sku=sku, **fields)


def outbox_ops(engine: Engine) -> list[tuple[str, str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(select(OutboxEntry.product_id, OutboxEntry.op,
                                   OutboxEntry.catalog_version).order_by(OutboxEntry.id))
        return [tuple(r) for r in rows]  # type: ignore[misc]


def count_products(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(ProductRecord)) or 0)


# -- upsert ------------------------------------------------------------------------------------


def test_upsert_creates_product_and_outbox_row(repo: CatalogRepository, engine: Engine) -> None:
    [outcome] = repo.upsert_products([item(images=["/img/z.jpg", "/img/a.jpg"])])
    assert outcome.changed and outcome.catalog_version == 1
    assert len(outcome.product_id) == 32
    assert repo.catalog_version() == 1
    assert outbox_ops(engine) == [(outcome.product_id, "upsert", 1)]

    product = repo.get_product(outcome.product_id)
    assert (product.sku, product.merchant, product.title) == ("SKU-1", "acme", "Product SKU-1")
    assert product.category == "shoes/running"
    assert product.price == pytest.approx(59.9) and product.currency == "EUR"
    assert [(i.position, i.uri) for i in product.images] == [(0, "/img/z.jpg"), (1, "/img/a.jpg")]
    assert product.inventory == [StockLevel("berlin", "A1", 5, 2)]
    assert product.attributes == {"gender": "unisex"} and product.listed
    assert product.catalog_version == 1
    assert repo.find_by_sku("acme", "SKU-1") == product
    assert repo.find_by_sku("acme", "nope") is None
    assert repo.find_by_sku("other", "SKU-1") is None


def test_upsert_is_one_transaction(repo: CatalogRepository, engine: Engine,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("crash before the outbox row")

    monkeypatch.setattr(products_module, "write_outbox", broken)
    with pytest.raises(RuntimeError):
        repo.upsert_products([item("A"), item("B")])
    assert count_products(engine) == 0
    assert repo.catalog_version() == 0
    assert repo.category_exists("shoes") is False


def test_same_batch_twice_is_unchanged(repo: CatalogRepository, engine: Engine) -> None:
    batch = [item("A"), item("B", merchant="other")]
    first = repo.upsert_products(batch)
    assert [o.changed for o in first] == [True, True]
    assert {o.catalog_version for o in first} == {1}  # one bump per batch

    # Whitespace around values is normalised away: still the same content.
    second = repo.upsert_products([item("A"),
                                   item("B", merchant="other", description=" A thing. ")])
    assert [o.changed for o in second] == [False, False]
    assert [(o.product_id, o.catalog_version) for o in second] == [
        (o.product_id, o.catalog_version) for o in first]
    assert repo.catalog_version() == 1
    assert len(outbox_ops(engine)) == 2


def test_changed_field_gets_new_version_and_outbox_row(repo: CatalogRepository,
                                                       engine: Engine) -> None:
    a, b = repo.upsert_products([item("A"), item("B")])
    a2, b2 = repo.upsert_products([item("A", title="Renamed", images=["/img/new.jpg"]),
                                   item("B")])
    assert a2.changed and a2.product_id == a.product_id and a2.catalog_version == 2
    assert not b2.changed and b2.catalog_version == 1
    assert outbox_ops(engine)[-1] == (a.product_id, "upsert", 2)
    assert len(outbox_ops(engine)) == 3
    product = repo.get_product(a.product_id)
    assert product.title == "Renamed" and product.catalog_version == 2
    assert [i.uri for i in product.images] == ["/img/new.jpg"]
    assert repo.get_product(b.product_id).catalog_version == 1


def test_duplicate_sku_in_batch_writes_nothing(repo: CatalogRepository, engine: Engine) -> None:
    with pytest.raises(InvalidInput, match="DUP"):
        repo.upsert_products([item("OK"), item("DUP"), item(" DUP ", title="again")])
    assert count_products(engine) == 0
    assert repo.catalog_version() == 0 and repo.pending_count() == 0
    # The same SKU under two merchants is two products.
    outcomes = repo.upsert_products([item("DUP"), item("DUP", merchant="other")])
    assert len({o.product_id for o in outcomes}) == 2


@pytest.mark.parametrize("bad", [
    {"price": -1.0}, {"price": float("nan")}, {"price": float("inf")}, {"sku": "  "},
    {"merchant": ""}, {"title": ""}, {"inventory": [StockLevel("berlin", "A1", -1)]},
    {"inventory": [StockLevel("berlin", "A1", 1, -2)]}, {"currency": "euros"},
])
def test_invalid_input_is_refused(repo: CatalogRepository, engine: Engine,
                                  bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        repo.upsert_products([item("GOOD"), replace(item("BAD"), **bad)])
    assert count_products(engine) == 0


# -- delete ------------------------------------------------------------------------------------


def test_delete_tombstones_and_writes_outbox(repo: CatalogRepository, engine: Engine) -> None:
    a, b = repo.upsert_products([item("A"), item("B")])
    assert repo.delete_products([a.product_id, "0" * 32, a.product_id]) == (1, 2)
    assert outbox_ops(engine)[-1] == (a.product_id, "delete", 2)
    assert repo.get_products([a.product_id, b.product_id]).keys() == {b.product_id}
    assert repo.find_by_sku("acme", "A") is None
    with pytest.raises(NotFound):
        repo.get_product(a.product_id)
    assert repo.delete_products([a.product_id]) == (0, 2)  # already gone: no new version

    # Upserting the SKU again brings the same product back, even with identical content.
    [again] = repo.upsert_products([item("A")])
    assert again.changed and again.product_id == a.product_id and again.catalog_version == 3
    assert repo.get_product(a.product_id).title == "Product A"


# -- inventory and price -----------------------------------------------------------------------


def test_update_inventory(repo: CatalogRepository, engine: Engine) -> None:
    a, b = repo.upsert_products([item("A"), item("B")])
    updated, version = repo.update_inventory([
        InventoryChange(a.product_id, "berlin", "A1", quantity=0),
        InventoryChange(a.product_id, "paris", "", quantity=7, reorder_point=1),
        InventoryChange(b.product_id, price=10.5, currency="usd"),
    ])
    assert (updated, version) == (2, 2)
    assert sorted(outbox_ops(engine)[-2:]) == sorted([(a.product_id, "payload", 2),
                                                      (b.product_id, "payload", 2)])
    pa, pb = repo.get_product(a.product_id), repo.get_product(b.product_id)
    assert pa.inventory == [StockLevel("berlin", "A1", 0, 2), StockLevel("paris", "", 7, 1)]
    assert pa.catalog_version == 2 and pa.price == pytest.approx(59.9)
    assert (pb.price, pb.currency) == (10.5, "USD")
    assert pb.inventory == [StockLevel("berlin", "A1", 5, 2)]

    # The same change again changes nothing.
    assert repo.update_inventory([InventoryChange(b.product_id, price=10.5)]) == (0, 2)
    # Unknown product: NotFound, and the known one in the same call is untouched.
    with pytest.raises(NotFound, match="f" * 32):
        repo.update_inventory([InventoryChange(a.product_id, "berlin", "A1", quantity=99),
                               InventoryChange("f" * 32, "berlin", "A1", quantity=1)])
    assert repo.get_product(a.product_id).inventory[0].quantity == 0
    assert repo.catalog_version() == 2
    with pytest.raises(InvalidInput):
        repo.update_inventory([InventoryChange(a.product_id, "berlin", "A1", quantity=-1)])
    with pytest.raises(InvalidInput):
        repo.update_inventory([InventoryChange(a.product_id, price=float("nan"))])
    # Re-sending the original product restores its stock (the stored hash followed the change).
    assert repo.upsert_products([item("A")])[0].changed
    assert repo.get_product(a.product_id).inventory == [StockLevel("berlin", "A1", 5, 2)]


# -- reads -------------------------------------------------------------------------------------


def _count_queries(engine: Engine) -> list[str]:
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    return seen


def test_get_products_is_batched(repo: CatalogRepository, engine: Engine) -> None:
    outcomes = repo.upsert_products([item(f"S{i}", category=f"c{i % 3}") for i in range(12)])
    ids = [o.product_id for o in outcomes]
    repo.delete_products([ids[0]])
    queries = _count_queries(engine)
    few = repo.get_products([*ids[:3], "nope"])
    n_few = len(queries)
    many = repo.get_products(ids)
    assert few.keys() == set(ids[1:3])
    assert many.keys() == set(ids[1:])
    assert len(queries) - n_few == n_few <= 4  # same query count for 2 or 11 products
    assert many[ids[5]].category == "c2"


def test_iter_products_pages(repo: CatalogRepository) -> None:
    ids = [o.product_id for o in repo.upsert_products([item(f"S{i}") for i in range(5)])]
    repo.delete_products([ids[2]])
    pages = list(repo.iter_products(batch=2))
    assert [len(p) for p in pages] == [2, 2]
    assert sorted(p.product_id for page in pages for p in page) == sorted(set(ids) - {ids[2]})


def test_category_exists_prefix(repo: CatalogRepository) -> None:
    repo.upsert_products([item("A", category=" Shoes / Running "),
                          item("B", category="a_b/c%d")])
    # Case-insensitive, like the category filter itself; never a partial path segment.
    for yes in ["Shoes", "Shoes/Running", " Shoes/ ", "shoes", "SHOES/running", "a_b",
                "a_b/c%d", ""]:
        assert repo.category_exists(yes), yes
    for no in ["Sho", "Shoes/Run", "Shoes/Running/Trail", "a%", "a_", "axb"]:
        assert not repo.category_exists(no), no
    assert repo.get_product(repo.find_by_sku("acme", "A").product_id).category == (  # type: ignore[union-attr]
        "Shoes/Running")


# -- outbox ------------------------------------------------------------------------------------


def test_claim_and_mark_done(repo: CatalogRepository) -> None:
    assert repo.oldest_pending_age_s() is None and repo.claim_outbox(10) == []
    a, b, c = repo.upsert_products([item("A"), item("B"), item("C")])
    claimed = repo.claim_outbox(2)
    assert [i.product_id for i in claimed] == [a.product_id, b.product_id]
    assert [i.id for i in claimed] == sorted(i.id for i in claimed)
    assert {(i.op, i.catalog_version, i.attempts) for i in claimed} == {("upsert", 1, 1)}
    # Not marked done: claimed again (at-least-once), one more attempt counted.
    assert [i.attempts for i in repo.claim_outbox(2)] == [2, 2]
    assert repo.pending_count() == 3
    age = repo.oldest_pending_age_s()
    assert age is not None and 0 <= age < 60

    assert repo.mark_done([i.id for i in claimed]) == 2
    assert repo.mark_done([i.id for i in claimed]) == 0
    assert repo.pending_count() == 1
    [last] = repo.claim_outbox(10)
    assert last.product_id == c.product_id
    repo.mark_done([last.id])
    assert repo.pending_count() == 0 and repo.oldest_pending_age_s() is None


# -- API keys ----------------------------------------------------------------------------------


def test_api_keys(repo: CatalogRepository) -> None:
    key_id = repo.create_api_key("h" * 64, "merchant", "acme", None)
    row = repo.find_api_key("h" * 64)
    assert row is not None
    assert (row.id, row.role, row.merchant, row.warehouse) == (key_id, "merchant", "acme", None)
    assert row.created_at.tzinfo is not None
    with pytest.raises(AlreadyExists):
        repo.create_api_key("h" * 64, "admin", None, None)
    assert repo.find_api_key("unknown") is None
    assert repo.revoke_api_key(key_id) is True
    assert repo.find_api_key("h" * 64) is None
    assert repo.revoke_api_key(key_id) is False


# -- concurrency -------------------------------------------------------------------------------


def test_concurrent_writers_get_distinct_versions(repo: CatalogRepository) -> None:
    """Writers queue instead of failing ('database is locked' on SQLite, duplicate merchant or
    category rows on PostgreSQL), and every batch gets its own version."""
    errors: list[BaseException] = []
    versions: list[int] = []

    def write(worker: int) -> None:
        try:
            for n in range(5):
                outcomes = repo.upsert_products([item(f"W{worker}-{n}", merchant="shared",
                                                      category=f"new/{n}")])
                versions.append(outcomes[0].catalog_version)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(versions) == list(range(1, 16))
    assert repo.catalog_version() == 15 and repo.pending_count() == 15


def test_make_engine_sqlite_settings(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'db.sqlite3'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        engine.dispose()
    assert (tmp_path / "nested" / "dir" / "db.sqlite3").is_file()
