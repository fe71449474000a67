"""In-memory fakes of the domain's ports (backend.domain.ports, backend.domain.vectors), so
the search, match and restock services can be tested without SQL, Qdrant or model weights.

`FakeCatalog` is a dict of products with the outbox's notion of an indexed version;
`MemoryVectorStore` ranks points by exact cosine and applies `Filters` the way the stores'
payload filters do (category subtree, keyword values, price range, stock, listing scope).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np

from backend.domain.ports import InventoryChange, OutboxItem, UpsertOutcome
from backend.domain.product_rules import category_key
from backend.domain.types import Filters, ImageRef, Product, ProductInput, StockLevel
from backend.domain.vectors import (
    BOOST,
    RRF_K,
    CollectionSpec,
    FacetCounts,
    FacetQuery,
    IndexState,
    PayloadPatch,
    PointPayload,
    Prefetch,
    ScoredPoint,
    SparseVector,
    VectorPoint,
    category_prefixes,
    point_id,
)
from backend.errors import NotFound, NotReady, shown


def make_product(product_id: str, *, merchant: str = "acme", title: str = "",
                 category: str = "", colour: str = "", size: str = "", material: str = "",
                 brand: str = "", price: float = 10.0, listed: bool = True, images: int = 1,
                 inventory: Sequence[StockLevel] = (), catalog_version: int = 1) -> Product:
    return Product(
        product_id=product_id, sku=f"sku-{product_id}", merchant=merchant,
        title=title or f"product {product_id}", description="", category=category,
        brand=brand, size=size, material=material, colour=colour, price=price,
        currency="EUR",
        images=[ImageRef(f"file:///{product_id}/{i}.png", i) for i in range(images)],
        inventory=list(inventory), attributes={}, listed=listed,
        catalog_version=catalog_version)


def vector_at(query: np.ndarray, cosine: float, seed: int) -> np.ndarray:
    """A unit vector whose cosine with the unit vector `query` is exactly `cosine`: rankings in
    a test follow from the numbers it writes, not from chance."""
    other = np.random.default_rng(seed).normal(size=query.shape).astype(np.float64)
    other -= other @ query * query
    other /= np.linalg.norm(other)
    v = cosine * query + np.sqrt(max(0.0, 1.0 - cosine * cosine)) * other
    return (v / np.linalg.norm(v)).astype(np.float32)


class FakeCatalog:
    """The `IndexedCatalog` port over a dict. `indexed` is the version search reflects."""

    def __init__(self, products: Sequence[Product] = (), indexed: int = 1) -> None:
        self.products = {p.product_id: p for p in products}
        self.indexed = indexed
        self.reads: list[list[str]] = []  # ids asked of get_products, per call

    # -- ProductReader

    def catalog_version(self) -> int:
        return max([self.indexed, *(p.catalog_version for p in self.products.values())])

    def get_products(self, product_ids: list[str]) -> dict[str, Product]:
        self.reads.append(list(product_ids))
        return {pid: self.products[pid] for pid in product_ids if pid in self.products}

    def product_versions(self, product_ids: Sequence[str]) -> dict[str, int]:
        return {pid: self.products[pid].catalog_version for pid in product_ids
                if pid in self.products}

    def get_product(self, product_id: str) -> Product:
        if product_id not in self.products:
            raise NotFound(f"product {shown(product_id)} not found")
        return self.products[product_id]

    def find_by_sku(self, merchant: str, sku: str) -> Product | None:
        return next((p for p in self.products.values()
                     if p.merchant == merchant and p.sku == sku), None)

    def iter_products(self, batch: int = 500, after: str = "") -> Iterator[list[Product]]:
        ids = sorted(pid for pid in self.products if pid > after)
        for start in range(0, len(ids), batch):
            yield [self.products[pid] for pid in ids[start:start + batch]]

    def category_exists(self, prefix: str) -> bool:
        key = category_key(prefix)
        return not key or any(
            key in category_prefixes(category_key(p.category)) for p in self.products.values())

    def image_uris_in_use(self, uris: Sequence[str]) -> set[str]:
        used = {i.uri for p in self.products.values() for i in p.images}
        return used & set(uris)

    # -- ProductCatalog writes are not used by the read-side services under test

    def upsert_products(self, items: list[ProductInput]) -> list[UpsertOutcome]:
        raise NotImplementedError

    def delete_products(self, product_ids: list[str]) -> tuple[int, int]:
        raise NotImplementedError

    def update_inventory(self, updates: list[InventoryChange]) -> tuple[int, int]:
        raise NotImplementedError

    # -- Outbox: nothing pending; the index reflects `indexed`

    def claim_outbox(self, limit: int) -> list[OutboxItem]:
        return []

    def mark_done(self, outbox_ids: list[int]) -> int:
        return 0

    def pending_count(self) -> int:
        return 0

    def pending_product_ids(self, among: Sequence[str] | None = None) -> list[str]:
        return []

    def newest_pending_versions(self, product_ids: Sequence[str]) -> dict[str, int]:
        return {}

    def indexed_version(self) -> int:
        return self.indexed

    def oldest_pending_age_s(self) -> float | None:
        return None

    def changed_since(self, version: int) -> list[str]:
        return sorted(pid for pid, p in self.products.items() if p.catalog_version > version)


def payload_of(product: Product, position: int, model_version: str = "fake.v1"
               ) -> PointPayload:
    """The payload the indexer writes (through the domain's own payload function)."""
    from backend.domain.payload import product_payload

    return product_payload(product, position, model_version)


def matches(payload: PointPayload, filters: Filters) -> bool:
    """`Filters` on a payload, as both vector stores apply them inside the query."""
    if filters.category.strip("/") and \
            category_prefixes(filters.category)[-1] not in payload.category:
        return False
    for name, values in filters.keyword_values().items():
        if getattr(payload, name) not in values:
            return False
    if filters.price.min is not None and payload.price < filters.price.min:
        return False
    if filters.price.max is not None and payload.price > filters.price.max:
        return False
    if filters.in_stock_only and not payload.in_stock:
        return False
    if payload.product_id in filters.exclude_product_ids:
        return False
    if filters.listed_or_merchants is not None:
        return payload.listed or payload.merchant in filters.listed_or_merchants
    return True


def _any_of(payload: PointPayload, keys: dict[str, tuple[str, ...]] | None) -> bool:
    """Whether the payload has one of the accepted values of any key (no keys: yes)."""
    if keys is None:
        return True
    return any(str(getattr(payload, k, "")) in values for k, values in keys.items())


class MemoryVectorStore:
    """The `VectorStore` port in memory: exact cosine ranking, filters applied before the
    limit (as inside an index query). `searches` records (vector name, filters) per call."""

    def __init__(self) -> None:
        self.collections: dict[str, dict[str, VectorPoint]] = {}
        self.aliases: dict[str, str] = {}
        self.searches: list[tuple[str, Filters]] = []

    def add_product(self, collection: str, product: Product,
                    vectors: Sequence[dict[str, np.ndarray]]) -> None:
        """One point per image position with these named vectors."""
        self.upsert(collection, [
            VectorPoint(point_id(product.product_id, pos, "fake.v1"), dict(named),
                        payload_of(product, pos))
            for pos, named in enumerate(vectors)])

    def _points(self, collection: str) -> dict[str, VectorPoint]:
        name = self.resolve(collection)
        if name not in self.collections:
            raise NotReady(f"collection {name!r} does not exist")
        return self.collections[name]

    def ensure_collection(self, spec: CollectionSpec) -> None:
        self.collections.setdefault(spec.name, {})

    def upsert(self, collection: str, points: list[VectorPoint]) -> None:
        store = self.collections.setdefault(self.resolve(collection), {})
        for p in points:
            store[p.id] = replace(p, vectors={k: np.asarray(v, np.float32)
                                              for k, v in p.vectors.items()})

    def delete_products(self, collection: str, product_ids: list[str]) -> None:
        store = self._points(collection)
        for pid in [k for k, p in store.items() if p.payload.product_id in product_ids]:
            del store[pid]

    def set_payload(self, collection: str, patches: list[PayloadPatch]) -> None:
        for patch in patches:
            for p in self._points(collection).values():
                if p.payload.product_id == patch.product_id:
                    p.payload = replace(p.payload, **patch.values)  # type: ignore[arg-type]

    def search(self, collection: str, vector_name: str, vector: np.ndarray, filters: Filters,
               limit: int, offset: int = 0, with_vectors: bool = False) -> list[ScoredPoint]:
        self.searches.append((vector_name, filters))
        q = np.asarray(vector, np.float32)
        q = q / np.linalg.norm(q)
        scored = [
            ScoredPoint(p.id, float(p.vectors[vector_name] @ q), p.payload,
                        dict(p.vectors) if with_vectors else {})
            for p in self._points(collection).values()
            if vector_name in p.vectors and matches(p.payload, filters)]
        scored.sort(key=lambda s: (-s.score, s.id))
        return scored[offset:offset + limit]

    def search_hybrid(self, collection: str, queries: dict[str, np.ndarray], filters: Filters,
                      limit: int, offset: int = 0) -> list[ScoredPoint]:
        fused: dict[str, ScoredPoint] = {}
        for name, vector in queries.items():
            for rank, hit in enumerate(self.search(collection, name, vector, filters, 100)):
                entry = fused.setdefault(hit.id, ScoredPoint(hit.id, 0.0, hit.payload))
                entry.score += 1.0 / (RRF_K + rank)
        ranked = sorted(fused.values(), key=lambda s: (-s.score, s.id))
        return ranked[offset:offset + limit]

    def search_fused(self, collection: str, prefetches: list[Prefetch], filters: Filters,
                     limit: int, with_vectors: list[str] | None = None, fusion: str = "rrf",
                     boost: dict[str, tuple[str, ...]] | None = None) -> list[ScoredPoint]:
        """Reciprocal rank fusion of the dense prefetches (sparse ones are not modelled; DBSF
        is ranked as RRF), a prefetch's `any_of` on top of the filter, BOOST for `boost`."""
        fused: dict[str, ScoredPoint] = {}
        for pf in prefetches:
            if isinstance(pf.vector, SparseVector):
                continue
            hits = self.search(collection, pf.name, pf.vector, filters, 10**9, 0,
                               bool(with_vectors))
            hits = [h for h in hits if _any_of(h.payload, pf.any_of)][:pf.depth]
            if fusion == "none":
                return hits[:limit]
            for rank, hit in enumerate(hits):
                entry = fused.setdefault(hit.id, ScoredPoint(hit.id, 0.0, hit.payload,
                                                             hit.vectors))
                entry.score += 1.0 / (RRF_K + rank)
        if boost:
            for entry in fused.values():
                if _any_of(entry.payload, boost):
                    entry.score += BOOST
        return sorted(fused.values(), key=lambda s: (-s.score, s.id))[:limit]

    def facets(self, collection: str, query: FacetQuery) -> FacetCounts:
        raise NotImplementedError("facets are tested against both real stores")

    def index_state(self, collection: str) -> IndexState:
        n = len(self._points(collection))
        return IndexState(points=n, indexed_vectors=n)

    def get_vectors(self, collection: str, product_id: str, vector_name: str
                    ) -> list[tuple[int, np.ndarray]]:
        return sorted((p.payload.position, p.vectors[vector_name])
                      for p in self._points(collection).values()
                      if p.payload.product_id == product_id and vector_name in p.vectors)

    def count(self, collection: str, filters: Filters | None = None) -> int:
        return sum(1 for p in self._points(collection).values()
                   if filters is None or matches(p.payload, filters))

    def scroll_payloads(self, collection: str) -> list[tuple[str, PointPayload]]:
        return sorted((k, p.payload) for k, p in self._points(collection).items())

    def product_payloads(self, collection: str, product_ids: list[str],
                         filters: Filters | None = None) -> list[tuple[str, PointPayload]]:
        return [(k, p) for k, p in self.scroll_payloads(collection)
                if p.product_id in product_ids and (filters is None or matches(p, filters))]

    def scroll_page(self, collection: str, offset: str | None, limit: int
                    ) -> tuple[list[tuple[str, PointPayload]], str | None]:
        rows = [r for r in self.scroll_payloads(collection) if offset is None or r[0] >= offset]
        return rows[:limit], rows[limit][0] if len(rows) > limit else None

    def flush(self, collection: str) -> None:
        return None

    def delete_points(self, collection: str, point_ids: list[str]) -> None:
        for pid in point_ids:
            self._points(collection).pop(pid, None)

    def build_index(self, collection: str) -> None:
        return None

    def set_alias(self, alias: str, collection: str) -> None:
        self.aliases[alias] = collection

    def resolve(self, alias_or_name: str) -> str:
        return self.aliases.get(alias_or_name, alias_or_name)

    def list_collections(self) -> list[str]:
        return sorted(self.collections)

    def drop_collection(self, collection: str) -> None:
        self.collections.pop(collection, None)
        self.aliases = {a: c for a, c in self.aliases.items() if c != collection}

    def close(self) -> None:
        return None
