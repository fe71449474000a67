"""Merchant and warehouse names in one canonical form: the rule itself, the catalog (SQLite
and PostgreSQL), API keys, and the migration that canonicalises existing rows and refuses
names that would merge two tenants."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from backend.domain.tenants import fold_name, tenant_name
from backend.domain.types import Product, StockLevel
from backend.errors import InvalidInput, PermissionDenied
from backend.security import ApiKeys, Principal, Role
from backend.stores.catalog import migrate
from backend.stores.catalog.db import make_engine
from backend.stores.catalog.repository import CatalogRepository, InventoryChange
from tests.unit.test_catalog_repository import (  # noqa: F401 (fixtures)
    engine,
    item,
    repo,
    sqlite_template,
)


def test_canonical_form() -> None:
    assert fold_name("  Merchant-B ") == "merchant-b"
    assert fold_name("ＭＥＲＣＨＡＮＴ－Ｂ") == "merchant-b"  # full-width (NFKC)
    assert fold_name("Straße") == fold_name("STRASSE") == "strasse"  # casefold, not lower
    assert tenant_name(" W1 ", "warehouse") == "w1"
    for bad, why in (("   ", "empty"), ("a,b", "','"), ("a\x00b", "control"),
                     ("x" * 256, "longer"), ("a\u200bb", "control")):
        with pytest.raises(InvalidInput, match=why):
            tenant_name(bad)


def test_the_catalog_stores_one_tenant_per_canonical_name(repo: CatalogRepository) -> None:  # noqa: F811
    [first] = repo.upsert_products([item("T-1", merchant="Merchant-B")])
    [second] = repo.upsert_products([item("T-1", merchant="  merchant-b ")])
    assert second.product_id == first.product_id and not second.changed
    stored = repo.get_product(first.product_id)
    assert stored.merchant == "merchant-b"
    for spelling in ("MERCHANT-B", " Merchant-b"):
        found = repo.find_by_sku(spelling, "T-1")
        assert found is not None and found.product_id == first.product_id
    with pytest.raises(InvalidInput, match="duplicate sku"):
        repo.upsert_products([item("T-2", merchant="Acme"), item("T-2", merchant="ACME")])


def test_warehouse_names_are_canonical_in_stock_rows(repo: CatalogRepository) -> None:  # noqa: F811
    [out] = repo.upsert_products([item("W-1", inventory=[StockLevel(" Berlin", "A1", 5)])])
    assert [s.warehouse for s in repo.get_product(out.product_id).inventory] == ["berlin"]
    with pytest.raises(InvalidInput, match="duplicate inventory row"):
        repo.upsert_products([item("W-2", inventory=[StockLevel("W1", "A", 1),
                                                     StockLevel("w1", "A", 2)])])
    # A stock change under another spelling updates the same row, not a second one.
    repo.update_inventory([InventoryChange(out.product_id, "BERLIN", "A1", quantity=9)])
    assert repo.get_product(out.product_id).inventory == [StockLevel("berlin", "A1", 9, 0)]


def test_keys_are_scoped_to_canonical_names(repo: CatalogRepository) -> None:  # noqa: F811
    keys = ApiKeys(repo, cache_ttl_s=0)
    created = keys.create("warehouse", merchants=["Acme ", "ACME"], warehouses=[" W1", "w2"])
    principal = keys.authenticate(created.key)
    assert principal.merchants == ("acme",) and principal.warehouses == ("w1", "w2")
    row = next(r for r in repo.list_api_keys() if r.id == created.key_id)
    assert (row.merchant, row.warehouse) == ("acme", "w1,w2")
    with pytest.raises(InvalidInput):
        keys.create("storefront", merchants=["a,b"])


def _product(merchant: str, listed: bool, *warehouses: str) -> Product:
    return Product("p1", "S", merchant, "t", "", "", "", "", "", "", 1.0, "EUR", [],
                   [StockLevel(w, "A", 1) for w in warehouses], {}, listed, 1)


def test_access_checks_compare_canonical_names() -> None:
    shop = Principal(Role.STOREFRONT, merchants=("merchant-b",))
    assert shop.can_see(_product("merchant-b", False))
    assert not shop.can_see(_product("merchant-bb", False))
    assert not shop.can_see(_product("merchant-c", False, "w1"))
    wh = Principal(Role.WAREHOUSE, warehouses=("w1",))
    assert wh.can_see(_product("merchant-c", False, "w1"))  # it holds the stock
    assert not wh.can_see(_product("merchant-c", False, "w2"))
    wh.require_warehouse(" W1")
    with pytest.raises(PermissionDenied):
        wh.require_warehouse("w2")
    shown = wh.redact(_product("merchant-c", True, "w1", "w2"))
    assert [s.warehouse for s in shown.inventory] == ["w1"]


# ------------------------------------------------------------------------------ migration


def _at_0002(url: str) -> Engine:
    migrate.upgrade(url, "0002")
    return make_engine(url)


def _seed(db: Engine, merchants: list[str], warehouses: list[str]) -> None:
    with db.begin() as conn:
        for n, name in enumerate(merchants):
            conn.execute(text("INSERT INTO merchants (name) VALUES (:n)"), {"n": name})
            conn.execute(text(
                "INSERT INTO products (id, merchant_id, sku, title, description, brand, size, "
                "material, colour, price, currency, listed, content_hash, catalog_version, "
                "deleted, created_at, updated_at) SELECT :id, id, 'SKU', 't', '', '', '', '', "
                "'', 1, 'EUR', true, 'h', 1, false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP "
                "FROM merchants WHERE name = :n"), {"id": f"p{n}", "n": name})
        for warehouse in warehouses:
            conn.execute(text("INSERT INTO inventory (product_id, warehouse, bin, quantity, "
                              "reorder_point) VALUES ('p0', :w, 'A', 1, 0)"), {"w": warehouse})
        conn.execute(text("INSERT INTO api_keys (key_hash, role, merchant, warehouse, "
                          "created_at) VALUES ('sha256:x', 'warehouse', 'Acme, ACME', "
                          "' W1', CURRENT_TIMESTAMP)"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    _reset(url)  # the session database is shared: start from an empty schema
    return url


def _reset(url: str) -> None:
    """An empty schema at head (what other tests of the session expect to find)."""
    migrate.downgrade(url, "base")
    if url.startswith("postgresql"):
        migrate.upgrade(url)


def test_migration_canonicalises_existing_names(empty_url: str) -> None:
    migrate.downgrade(empty_url, "base")
    db = _at_0002(empty_url)
    try:
        _seed(db, ["  Acme", "Straße"], ["W1 ", "w2"])
        migrate.upgrade(empty_url)
        with db.connect() as conn:
            names = set(conn.execute(text("SELECT name FROM merchants")).scalars())
            stock = set(conn.execute(text("SELECT warehouse FROM inventory")).scalars())
            key = conn.execute(text("SELECT merchant, warehouse FROM api_keys")).one()
            hashes = set(conn.execute(text("SELECT content_hash FROM products")).scalars())
            queued = list(conn.execute(text("SELECT product_id, op FROM outbox")))
        assert names == {"acme", "strasse"} and stock == {"w1", "w2"}
        assert tuple(key) == ("acme", "w1")
        assert hashes == {""}  # re-stored on the next upsert
        # The payload held "straße" (lower-cased), now "strasse": re-indexed; "acme" was not.
        assert [tuple(r) for r in queued] == [("p1", "upsert")]
    finally:
        db.dispose()
        _reset(empty_url)


def test_migration_refuses_names_that_would_merge_two_tenants(empty_url: str) -> None:
    migrate.downgrade(empty_url, "base")
    db = _at_0002(empty_url)
    try:
        _seed(db, ["Merchant-B", "merchant-b", "solo"], [])
        with pytest.raises(Exception, match="'Merchant-B', 'merchant-b'"):
            migrate.upgrade(empty_url)
        assert migrate.current_revision(empty_url) == "0002"
        with db.connect() as conn:  # nothing was changed
            names = sorted(conn.execute(text("SELECT name FROM merchants")).scalars())
        assert names == ["Merchant-B", "merchant-b", "solo"]
        with db.begin() as conn:  # the operator renames one; the migration then runs
            conn.execute(text("UPDATE merchants SET name = 'merchant-b-old' "
                              "WHERE name = 'Merchant-B'"))
        migrate.upgrade(empty_url)
        assert migrate.is_up_to_date(empty_url)
    finally:
        db.dispose()
        _reset(empty_url)
