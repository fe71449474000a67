"""Search hydration from the product cache: the same products a full catalog read gives,
including right after a write (stock, listing, delete), with SQL read in full only for the
products that changed; the indexed version read again when a caller needs a newer one."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from backend.domain.hydration import IndexedVersionClock, ProductCache, hydrate
from backend.domain.types import ProductInput, StockLevel
from backend.stores.catalog.repository import CatalogRepository, InventoryChange


def _items(n: int) -> list[ProductInput]:
    return [ProductInput(sku=f"s{i}", merchant="acme", title=f"item {i}", category="toys",
                         price=10.0 + i, inventory=[StockLevel("berlin", "A1", 3)])
            for i in range(n)]


class CountingCatalog:
    """The real repository, counting full product reads."""

    def __init__(self, repo: CatalogRepository) -> None:
        self.repo = repo
        self.full_reads: list[list[str]] = []

    def get_products(self, ids: list[str]) -> Any:
        self.full_reads.append(sorted(ids))
        return self.repo.get_products(ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.repo, name)


def test_cache_gives_what_a_full_read_gives_and_reloads_only_changed(
        sqlite_catalog: CatalogRepository) -> None:
    ids = [o.product_id for o in sqlite_catalog.upsert_products(_items(4))]
    catalog = CountingCatalog(sqlite_catalog)
    cache = ProductCache(100)
    first = hydrate(catalog, cache, ids)  # type: ignore[arg-type]
    assert first == sqlite_catalog.get_products(ids)
    assert catalog.full_reads == [sorted(ids)]

    again = hydrate(catalog, cache, ids)  # type: ignore[arg-type]
    assert again == first and len(catalog.full_reads) == 1  # nothing changed: no full read

    # A stock change (still in the outbox: search's index has not seen it) is what the
    # response shows, read for that product alone.
    sqlite_catalog.update_inventory([InventoryChange(ids[1], "berlin", "A1", quantity=0)])
    changed = hydrate(catalog, cache, ids)  # type: ignore[arg-type]
    assert changed == sqlite_catalog.get_products(ids)
    assert not changed[ids[1]].in_stock
    assert catalog.full_reads[-1] == [ids[1]]

    # Unlisted: the fresh copy says so, so the caller's visibility check sees it.
    sqlite_catalog.upsert_products([replace(_items(4)[2], listed=False)])
    assert hydrate(catalog, cache, ids)[ids[2]].listed is False  # type: ignore[arg-type]

    # Deleted products are left out, as get_products leaves them out.
    sqlite_catalog.delete_products([ids[0]])
    after_delete = hydrate(catalog, cache, [*ids, "no-such-id"])  # type: ignore[arg-type]
    assert set(after_delete) == set(ids[1:])
    assert after_delete == sqlite_catalog.get_products(ids)


def test_zero_capacity_reads_everything_from_sql(sqlite_catalog: CatalogRepository) -> None:
    ids = [o.product_id for o in sqlite_catalog.upsert_products(_items(2))]
    catalog = CountingCatalog(sqlite_catalog)
    cache = ProductCache(0)
    for _ in range(2):
        assert hydrate(catalog, cache, ids) == sqlite_catalog.get_products(ids)  # type: ignore[arg-type]
    assert len(catalog.full_reads) == 2 and len(cache) == 0


def test_cache_keeps_the_most_recently_used() -> None:
    cache = ProductCache(2)
    with pytest.raises(ValueError):
        ProductCache(-1)
    base = dict(sku="s", merchant="m", title="t", description="", category="", brand="",
                size="", material="", colour="", price=1.0, currency="EUR", images=[],
                inventory=[], attributes={}, listed=True)
    from backend.domain.types import Product

    a, b, c = (Product(product_id=p, catalog_version=1, **base) for p in "abc")  # type: ignore[arg-type]
    cache.put([a, b])
    assert cache.get("a", 1) is a  # a is now the most recent
    cache.put([c])
    assert cache.get("b", 1) is None and cache.get("a", 1) is a and cache.get("c", 1) is c
    assert cache.get("a", 2) is None  # another version is not served


def test_indexed_version_clock_rereads_when_a_caller_needs_more(
        sqlite_catalog: CatalogRepository) -> None:
    calls: list[int] = []

    class Counting:
        def indexed_version(self) -> int:
            value = sqlite_catalog.indexed_version()
            calls.append(value)
            return value

    clock = IndexedVersionClock(Counting(), ttl_s=3600)  # type: ignore[arg-type]
    start = clock.get()
    assert clock.get() == start and len(calls) == 1  # fresh copy reused
    outcome = sqlite_catalog.upsert_products(_items(1))[0]
    for claimed in [sqlite_catalog.claim_outbox(100)]:
        sqlite_catalog.mark_done([c.id for c in claimed])
    # A caller waiting for its own write gets the new value at once, not after the TTL.
    assert clock.get(at_least=outcome.catalog_version) >= outcome.catalog_version
    assert len(calls) == 2
    with pytest.raises(ValueError):
        IndexedVersionClock(sqlite_catalog, ttl_s=-1)
