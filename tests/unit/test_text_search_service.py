"""Text search through SearchService over a real SQL catalog (SQLite) and each vector store:
facet counts equal counts computed from SQL for the same query and filters, explain gives
every hit its score parts, an exact SKU comes first."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy import text as sql

from backend.config import SearchSettings
from backend.domain.indexing import Indexer, collection_spec
from backend.domain.lexical import match_terms, product_fields
from backend.domain.search import SearchQuery, SearchService
from backend.domain.types import Filters, PriceRange, ProductInput
from backend.errors import InvalidInput
from backend.stores.catalog.db import make_engine
from backend.stores.catalog.repository import CatalogRepository
from backend.stores.vectors import VectorStore
from tests.fakes import FakeEncoder
from tests.unit.test_vector_store_contract import _open

COLOURS = ["Red", "blue", "green"]
MATERIALS = ["cotton", "wool", "leather", "cotton"]
BRANDS = ["acme", "globex", "initech"]
NOUNS = ["shirt", "boot", "kettle", "scarf", "mug"]
CATEGORIES = ["apparel/shirts", "apparel/shoes", "home/kitchen"]
FACETS = ["category", "size", "material", "colour", "brand", "merchant", "price"]
TOP_N = 3


def inputs() -> list[ProductInput]:
    return [ProductInput(
        sku=f"SK-{100 + i}", merchant=f"shop{i % 2}",
        title=f"{COLOURS[i % 3]} {MATERIALS[i % 4]} {NOUNS[i % 5]} {i}",
        description="红色 棉" if i % 7 == 0 else "", category=CATEGORIES[i % 3],
        brand=BRANDS[i % 3], size=["S", "M", "XL"][i % 3], material=MATERIALS[i % 4],
        colour=COLOURS[i % 3], price=float(3 + 17 * i % 140)) for i in range(36)]


@pytest.fixture(params=["edge", "local",
                        pytest.param("server", marks=pytest.mark.qdrant_server)])
def service(request: pytest.FixtureRequest, sqlite_catalog: CatalogRepository, sqlite_url: str,
            tmp_path: Path) -> Iterator[tuple[SearchService, Engine]]:
    store: VectorStore = _open(request.param, tmp_path)
    encoder = FakeEncoder()
    collection = f"svc_{uuid.uuid4().hex[:10]}"
    store.ensure_collection(collection_spec(collection, encoder))
    sqlite_catalog.upsert_products(inputs())
    Indexer(sqlite_catalog, store, encoder, collection).drain()
    settings = SearchSettings(facet_top_n=TOP_N)
    svc = SearchService(sqlite_catalog, store, encoder, collection, settings)
    svc.ready = True
    engine = make_engine(sqlite_url)
    yield svc, engine
    engine.dispose()
    store.drop_collection(collection)
    store.close()


def sql_facets(engine: Engine, catalog: CatalogRepository, query: str, min_price: float,
               brands: list[str], top_ids: list[str]) -> dict[str, Counter[str]]:
    """Facets from SQL: the rows passing the same filters, kept when they match every query
    term lexically or are among the top hits, counted per value with GROUP BY."""
    with engine.connect() as conn:
        rows = conn.execute(sql(
            "SELECT p.id FROM products p WHERE NOT p.deleted AND p.price >= :low "
            "AND lower(p.brand) IN (" + ",".join(f"'{b}'" for b in brands) + ")"),
            {"low": min_price}).scalars().all()
        products = catalog.get_products(list(rows))
        wanted = set(match_terms(query))
        keep = [pid for pid, p in products.items()
                if (wanted and wanted <= {t for f in product_fields(p).values() for t in f})
                or pid in top_ids]
        ids = ",".join(f"'{pid}'" for pid in keep) or "''"
        out: dict[str, Counter[str]] = {}
        for key, column in (("size", "p.size"), ("material", "p.material"),
                            ("colour", "p.colour"), ("brand", "p.brand"), ("merchant", "m.name")):
            out[key] = Counter(dict(conn.execute(sql(
                f"SELECT lower({column}), COUNT(*) FROM products p "
                f"JOIN merchants m ON m.id = p.merchant_id WHERE p.id IN ({ids}) "
                f"GROUP BY lower({column})")).all()))
        cats: Counter[str] = Counter()
        for path, n in conn.execute(sql(
                f"SELECT c.path, COUNT(*) FROM products p JOIN categories c "
                f"ON c.id = p.category_id WHERE p.id IN ({ids}) GROUP BY c.path")).all():
            parts = path.split("/")
            for depth in range(1, len(parts) + 1):
                cats["/".join(parts[:depth])] += n
        out["category"] = cats
        bands: Counter[str] = Counter()
        for label, low, high in (("0-10", 0, 10), ("10-25", 10, 25), ("25-50", 25, 50),
                                 ("50-100", 50, 100), ("100-250", 100, 250)):
            bands[label] = conn.execute(sql(
                f"SELECT COUNT(*) FROM products p WHERE p.id IN ({ids}) "
                f"AND p.price >= :low AND p.price < :high"), {"low": low, "high": high}
            ).scalar_one()
        out["price"] = bands
    return out


@pytest.mark.parametrize("query", ["cotton shirt", "红色 棉", "kettle", "SK-104"])
def test_facets_equal_sql_counts(service: tuple[SearchService, Engine], query: str,
                                 sqlite_catalog: CatalogRepository) -> None:
    svc, engine = service
    brands = ["acme", "initech"]
    result = asyncio.run(svc.search(SearchQuery(
        text=query, filters=Filters(brands=brands, price=PriceRange(min=10.0)), top_k=10,
        facets=FACETS)))
    top_ids = [h.product.product_id for h in result.hits][:TOP_N]
    # Asking for facets does not change the page.
    plain = asyncio.run(svc.search(SearchQuery(
        text=query, filters=Filters(brands=brands, price=PriceRange(min=10.0)), top_k=10)))
    assert [h.product.product_id for h in plain.hits] == \
        [h.product.product_id for h in result.hits]
    expected = sql_facets(engine, sqlite_catalog, query, 10.0, brands, top_ids)
    assert set(result.facets) == set(FACETS)
    for key in FACETS:
        got = {v: n for v, n in result.facets[key] if n}
        assert got == {v: n for v, n in expected[key].items() if n}, key


def test_explain_gives_score_parts_and_exact_sku_comes_first(
        service: tuple[SearchService, Engine]) -> None:
    svc, _ = service
    result = asyncio.run(svc.search(SearchQuery(text="sk-117", top_k=5, explain=True)))
    assert result.hits[0].product.sku == "SK-117"
    first = result.hits[0].parts
    assert first["exact"] == 1.0 and first["fused_rank"] == 0.0
    assert first["lexical_rank"] == 0.0 and first["lexical"] > 0
    assert -1.0 <= first["dense_text"] <= 1.0
    for rank, hit in enumerate(result.hits):
        assert {"dense_text", "fused_rank", "fused_score", "exact"} <= set(hit.parts)
        assert hit.parts["fused_rank"] == rank
    plain = asyncio.run(svc.search(SearchQuery(text="sk-117", top_k=5)))
    assert [h.product.product_id for h in plain.hits] == \
        [h.product.product_id for h in result.hits]
    assert all(not h.parts for h in plain.hits) and not plain.facets


def test_unknown_facet_is_invalid(service: tuple[SearchService, Engine]) -> None:
    svc, _ = service
    with pytest.raises(InvalidInput):
        asyncio.run(svc.search(SearchQuery(text="shirt", facets=["title"])))
