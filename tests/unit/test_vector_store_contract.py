"""One contract suite for every VectorStore: qdrant-edge, the qdrant-client code path in local
mode, and a real Qdrant server when QDRANT_URL is set.

Expected results are computed by brute force in numpy over the same synthetic points, so every
search is checked against exact cosine similarity. Filter cases also check that the filter runs
inside the query: each uses a query whose filtered top-k differs from its unfiltered top-k.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from backend.domain.types import Filters, PriceRange
from backend.errors import ConfigError, InvalidInput, NotReady, StoreBusy
from backend.stores.vectors import (
    RRF_K,
    CollectionSpec,
    EdgeVectorStore,
    PayloadPatch,
    PointPayload,
    Prefetch,
    QdrantServerStore,
    SparseVector,
    VectorPoint,
    VectorStore,
    category_prefixes,
    point_id,
)

IMG, TXT = 32, 16
MODEL = "m-test"
N_PRODUCTS = 60
K = 5

CATEGORIES = ["apparel/shoes/running", "apparel/shoes/boots", "apparel/shirts", "home/kitchen"]
SIZES = ["S", "M", "L", "XL", "42"]
MATERIALS = ["cotton", "leather", "wool"]
COLOURS = ["red", "blue", "green", "black", "white", "grey", "navy"]
BRANDS = ["acme", "globex", "initech", "umbrella"]
MERCHANTS = ["m1", "m2", "m3"]


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


@dataclass
class Catalog:
    points: list[VectorPoint]

    def by_id(self) -> dict[str, VectorPoint]:
        return {p.id: p for p in self.points}

    def product_points(self, product_id: str) -> list[VectorPoint]:
        return [p for p in self.points if p.payload.product_id == product_id]

    def expected(
        self,
        vector_name: str,
        query: np.ndarray,
        predicate: Callable[[PointPayload], bool],
        k: int,
    ) -> list[tuple[str, float]]:
        """Exact top-k (id, cosine) among points that have the vector and match."""
        q = query / np.linalg.norm(query)
        scored = [
            (p.id, float(np.dot(p.vectors[vector_name], q)))
            for p in self.points
            if vector_name in p.vectors and predicate(p.payload)
        ]
        return sorted(scored, key=lambda item: -item[1])[:k]


def make_catalog(seed: int = 7, n_products: int = N_PRODUCTS) -> Catalog:
    rng = np.random.default_rng(seed)
    points = []
    for i in range(n_products):
        pid = f"p{i:03d}"
        payload = PointPayload(
            product_id=pid,
            position=0,
            model_version=MODEL,
            catalog_version=1,
            merchant=MERCHANTS[i % 3],
            category=category_prefixes(CATEGORIES[i % 4]),
            size=SIZES[i % 5],
            material=MATERIALS[(i // 3) % 3],
            colour=COLOURS[i % 7],
            brand=BRANDS[(i // 2) % 4],
            price=float(5 + (i * 37) % 100),
            in_stock=i % 4 != 0,
            listed=i % 5 != 0,
        )
        text = _unit(rng, TXT)
        # Every tenth product has no images: one text-only point at position -1.
        positions = [-1] if i % 10 == 9 else list(range(1 + i % 3))
        for pos in positions:
            vectors = {"text": text} if pos < 0 else {"image": _unit(rng, IMG), "text": text}
            points.append(
                VectorPoint(
                    id=point_id(pid, pos, MODEL),
                    vectors=vectors,
                    payload=replace(payload, position=pos, category=list(payload.category)),
                )
            )
    return Catalog(points)


CATALOG = make_catalog()


def spec(name: str, **kw: Any) -> CollectionSpec:
    return CollectionSpec(name=name, vectors={"image": IMG, "text": TXT}, **kw)


def unique(prefix: str = "c") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# --- backends ------------------------------------------------------------------------------


@dataclass
class Backend:
    kind: str
    store: VectorStore
    catalog: str  # a populated collection the read-only tests share
    root: Path | None = None


def _open(kind: str, tmp: Path) -> VectorStore:
    if kind == "edge":
        return EdgeVectorStore(tmp / "vectors")
    if kind == "local":
        return QdrantServerStore(QdrantClient(":memory:"))
    url = os.environ.get("QDRANT_URL")
    if not url:
        pytest.skip("QDRANT_URL is not set: no Qdrant server to run the contract against")
    return QdrantServerStore.from_url(url, api_key=os.environ.get("QDRANT_API_KEY"))


@pytest.fixture(
    scope="module",
    params=[
        "edge",
        "local",
        pytest.param("server", marks=pytest.mark.qdrant_server),
    ],
)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    tmp = tmp_path_factory.mktemp(request.param)
    store = _open(request.param, tmp)
    before = set(store.list_collections())
    name = unique("catalog")
    store.ensure_collection(spec(name))
    store.upsert(name, CATALOG.points)
    store.build_index(name)
    yield Backend(request.param, store, name, tmp / "vectors")
    # A real server outlives the test run: leave it as it was.
    for leftover in set(store.list_collections()) - before:
        store.drop_collection(leftover)
    store.close()


@pytest.fixture
def fresh(backend: Backend) -> Iterator[str]:
    """An empty collection of its own, for tests that write."""
    name = unique()
    backend.store.ensure_collection(spec(name))
    yield name
    backend.store.drop_collection(name)


def ids(results: list) -> list[str]:
    return [r.id for r in results]


# --- collections ---------------------------------------------------------------------------


def test_satisfies_protocol(backend: Backend) -> None:
    assert isinstance(backend.store, VectorStore)


def test_ensure_collection_idempotent_and_mismatch(backend: Backend, fresh: str) -> None:
    store = backend.store
    store.ensure_collection(spec(fresh))
    store.ensure_collection(spec(fresh, hnsw_m=32))  # other index settings: kept as they are
    assert fresh in store.list_collections()
    assert store.count(fresh) == 0
    with pytest.raises(ConfigError, match="exists with vectors"):
        store.ensure_collection(CollectionSpec(fresh, {"image": IMG + 1, "text": TXT}))
    with pytest.raises(ConfigError, match="exists with vectors"):
        store.ensure_collection(CollectionSpec(fresh, {"image": IMG}))


def test_unknown_collection_and_bad_vectors(backend: Backend) -> None:
    store = backend.store
    with pytest.raises(NotReady):
        store.search(unique("missing"), "image", CATALOG.points[0].vectors["image"], Filters(), K)
    with pytest.raises(NotReady):
        store.count(unique("missing"))
    with pytest.raises(InvalidInput):
        store.search(backend.catalog, "image", np.ones(IMG + 3, np.float32), Filters(), K)
    with pytest.raises(InvalidInput):
        store.search(backend.catalog, "image", np.full(IMG, np.nan, np.float32), Filters(), K)
    with pytest.raises(InvalidInput):
        store.search(backend.catalog, "image", np.ones(IMG, np.float32), Filters(), 0)
    with pytest.raises(InvalidInput, match="price"):
        store.search(
            backend.catalog, "image", np.ones(IMG, np.float32),
            Filters(price=PriceRange(min=50, max=10)), K,
        )


def test_count_and_scroll_payloads(backend: Backend) -> None:
    store = backend.store
    assert store.count(backend.catalog) == len(CATALOG.points)
    scrolled = dict(store.scroll_payloads(backend.catalog))
    assert scrolled == {p.id: p.payload for p in CATALOG.points}


def test_index_state_counts_points(backend: Backend, fresh: str) -> None:
    store = backend.store
    state = store.index_state(backend.catalog)
    assert state.points == len(CATALOG.points)
    # A small collection may stay a full scan (below the full-scan threshold): never more
    # indexed vectors than points times dense vectors.
    assert 0 <= state.indexed_vectors <= state.points * 2
    assert store.index_state(fresh).points == 0
    with pytest.raises(NotReady):
        store.index_state(unique("missing"))


def test_product_payloads_and_paged_scroll(backend: Backend, fresh: str) -> None:
    store = backend.store
    wanted = [CATALOG.points[0].payload.product_id, CATALOG.points[-1].payload.product_id]
    got = dict(store.product_payloads(backend.catalog, [*wanted, "no-such-product"]))
    assert got == {p.id: p.payload for p in CATALOG.points if p.payload.product_id in wanted}
    assert store.product_payloads(backend.catalog, []) == []
    # Pages in a fixed order that cover every point once.
    seen: list[str] = []
    offset: str | None = None
    pages = 0
    while True:
        page, offset = store.scroll_page(backend.catalog, offset, 7)
        assert len(page) <= 7
        seen += [pid for pid, _ in page]
        pages += 1
        if offset is None:
            break
    assert sorted(seen) == sorted(p.id for p in CATALOG.points) and len(set(seen)) == len(seen)
    assert pages >= len(CATALOG.points) // 7
    assert store.scroll_page(fresh, None, 5) == ([], None)
    with pytest.raises(InvalidInput):
        store.scroll_page(backend.catalog, None, 0)
    store.flush(backend.catalog)


# --- search --------------------------------------------------------------------------------


def test_search_nearest_first_with_cosine_scores(backend: Backend) -> None:
    rng = np.random.default_rng(1)
    target = CATALOG.points[10]
    query = target.vectors["image"] + 0.05 * _unit(rng, IMG)
    results = backend.store.search(backend.catalog, "image", query, Filters(), limit=8)
    expected = CATALOG.expected("image", query, lambda _: True, 8)
    assert ids(results) == [i for i, _ in expected]
    assert results[0].id == target.id
    np.testing.assert_allclose([r.score for r in results], [s for _, s in expected], atol=1e-4)
    assert results[0].payload == target.payload
    assert all(r.vectors == {} for r in results)


def test_search_pages_and_returns_vectors(backend: Backend) -> None:
    query = CATALOG.points[3].vectors["image"]
    expected = [i for i, _ in CATALOG.expected("image", query, lambda _: True, 9)]
    page2 = backend.store.search(backend.catalog, "image", query, Filters(), limit=3, offset=6)
    assert ids(page2) == expected[6:9]
    top = backend.store.search(backend.catalog, "image", query, Filters(), 2, with_vectors=True)
    np.testing.assert_allclose(top[0].vectors["image"], query, atol=1e-5)
    assert set(top[0].vectors) == {"image", "text"}


def test_several_images_per_product(backend: Backend) -> None:
    product = "p002"  # three images
    points = CATALOG.product_points(product)
    assert [p.payload.position for p in points] == [0, 1, 2]
    got = backend.store.get_vectors(backend.catalog, product, "image")
    assert [pos for pos, _ in got] == [0, 1, 2]
    for (_, vec), p in zip(got, points, strict=True):
        np.testing.assert_allclose(vec, p.vectors["image"], atol=1e-5)
    for p in points:
        hit = backend.store.search(backend.catalog, "image", p.vectors["image"], Filters(), 1)[0]
        assert (hit.payload.product_id, hit.payload.position) == (product, p.payload.position)


def test_text_only_points(backend: Backend) -> None:
    product = "p009"  # no images: one text-only point at position -1
    assert backend.store.get_vectors(backend.catalog, product, "image") == []
    text = backend.store.get_vectors(backend.catalog, product, "text")
    assert [pos for pos, _ in text] == [-1]
    query = CATALOG.product_points(product)[0].vectors["text"]
    image_hits = backend.store.search(backend.catalog, "image", np.ones(IMG), Filters(), 200)
    assert product not in {h.payload.product_id for h in image_hits}
    text_hit = backend.store.search(backend.catalog, "text", query, Filters(), 1)[0]
    assert text_hit.payload.product_id == product
    assert text_hit.score == pytest.approx(1.0, abs=1e-4)


# --- filters -------------------------------------------------------------------------------

Case = tuple[Filters, Callable[[PointPayload], bool]]

FILTER_CASES: dict[str, Case] = {
    "category-subtree": (
        Filters(category="apparel/shoes"),
        lambda p: CATEGORIES[int(p.product_id[1:]) % 4].startswith("apparel/shoes/"),
    ),
    "category-root": (Filters(category="/apparel/"), lambda p: "apparel" in p.category),
    "category-leaf": (
        Filters(category="apparel/shoes/boots"), lambda p: "apparel/shoes/boots" in p.category
    ),
    "sizes": (Filters(sizes=["S", "XL"]), lambda p: p.size in {"S", "XL"}),
    "materials": (Filters(materials=["wool"]), lambda p: p.material == "wool"),
    "colours": (Filters(colours=["red", "navy"]), lambda p: p.colour in {"red", "navy"}),
    "brands": (Filters(brands=["globex"]), lambda p: p.brand == "globex"),
    "merchants": (Filters(merchants=["m2", "m3"]), lambda p: p.merchant in {"m2", "m3"}),
    "price-min": (Filters(price=PriceRange(min=79.0)), lambda p: p.price >= 79.0),
    "price-max": (Filters(price=PriceRange(max=42.0)), lambda p: p.price <= 42.0),
    "price-range": (
        Filters(price=PriceRange(min=42.0, max=79.0)), lambda p: 42.0 <= p.price <= 79.0
    ),
    "in-stock": (Filters(in_stock_only=True), lambda p: p.in_stock),
    "exclude-ids": (
        Filters(exclude_product_ids=[f"p{i:03d}" for i in range(0, N_PRODUCTS, 2)]),
        lambda p: int(p.product_id[1:]) % 2 == 1,
    ),
    "listed-or-merchant": (
        Filters(listed_or_merchants=["m2"]), lambda p: p.listed or p.merchant == "m2"
    ),
    "listed-only": (Filters(listed_or_merchants=[]), lambda p: p.listed),
    "combined": (
        Filters(
            category="apparel",
            merchants=["m1", "m2"],
            price=PriceRange(max=90.0),
            in_stock_only=True,
            exclude_product_ids=["p001"],
            listed_or_merchants=["m1"],
        ),
        lambda p: "apparel" in p.category
        and p.merchant in {"m1", "m2"}
        and p.price <= 90.0
        and p.in_stock
        and p.product_id != "p001"
        and (p.listed or p.merchant == "m1"),
    ),
}


def _query_beyond_top_k(predicate: Callable[[PointPayload], bool]) -> np.ndarray:
    """A query whose filtered top-k reaches past its unfiltered top-k (deterministic)."""
    for p in CATALOG.points:
        if "image" not in p.vectors or predicate(p.payload):
            continue
        query = p.vectors["image"]
        unfiltered = {i for i, _ in CATALOG.expected("image", query, lambda _: True, K)}
        filtered = {i for i, _ in CATALOG.expected("image", query, predicate, K)}
        if len(filtered) == K and filtered - unfiltered:
            return query
    raise AssertionError("no suitable query in the synthetic catalog")


@pytest.mark.parametrize("case", list(FILTER_CASES), ids=list(FILTER_CASES))
def test_product_payloads_apply_the_query_filter(backend: Backend, case: str) -> None:
    """Candidates found outside the store (photo search's descriptor vote) are read back
    through `product_payloads` with the query's filter: the same points a query returns."""
    filters, predicate = FILTER_CASES[case]
    products = sorted({p.payload.product_id for p in CATALOG.points})
    got = sorted(pid for pid, _ in backend.store.product_payloads(backend.catalog, products,
                                                                   filters))
    wanted = sorted(p.id for p in CATALOG.points if predicate(p.payload))
    assert got == wanted
    assert 0 < len(got) < len(CATALOG.points)


@pytest.mark.parametrize("case", list(FILTER_CASES), ids=list(FILTER_CASES))
def test_filter_is_applied_inside_the_query(backend: Backend, case: str) -> None:
    filters, predicate = FILTER_CASES[case]
    store = backend.store
    query = _query_beyond_top_k(predicate)
    unfiltered = store.search(backend.catalog, "image", query, Filters(), K)
    results = store.search(backend.catalog, "image", query, filters, K)
    expected = CATALOG.expected("image", query, predicate, K)
    assert all(predicate(r.payload) for r in results)
    assert ids(results) == [i for i, _ in expected]
    assert set(ids(results)) - set(ids(unfiltered)), "filter must not be a post-filter"
    matching = sum(predicate(p.payload) for p in CATALOG.points)
    assert store.count(backend.catalog, filters) == matching


def test_hybrid_search(backend: Backend) -> None:
    target = CATALOG.product_points("p003")[0]  # one image, so its text vector is unique to it
    queries = {"image": target.vectors["image"], "text": target.vectors["text"]}
    results = backend.store.search_hybrid(backend.catalog, queries, Filters(), limit=10)
    assert results[0].id == target.id
    assert results[0].score == pytest.approx(2 / RRF_K, rel=1e-4)
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    # A text-only point is reachable through the text vector alone, with one rank's share.
    text_only = CATALOG.product_points("p009")[0]
    hits = backend.store.search_hybrid(
        backend.catalog, {"image": target.vectors["image"], "text": text_only.vectors["text"]},
        Filters(), limit=len(CATALOG.points),
    )
    by_id = {h.id: h.score for h in hits}
    assert by_id[text_only.id] == pytest.approx(1 / RRF_K, rel=1e-4)
    assert by_id[target.id] > 1 / RRF_K
    # The filter applies to every per-vector query.
    filters, predicate = FILTER_CASES["combined"]
    filtered = backend.store.search_hybrid(backend.catalog, queries, filters, limit=10)
    assert filtered and all(predicate(r.payload) for r in filtered)
    assert not predicate(target.payload)
    assert target.id not in ids(filtered)
    with pytest.raises(InvalidInput):
        backend.store.search_hybrid(backend.catalog, {}, Filters(), 10)


# --- sparse visual words and fused candidate queries ---------------------------------------

VOCAB = 500


def words_of(point: VectorPoint) -> SparseVector:
    """Deterministic visual words of one image point: 12 distinct words with counts."""
    rng = np.random.default_rng(uuid.UUID(point.id).int % 2**32)
    indices = rng.choice(VOCAB, size=12, replace=False).astype(np.int64)
    return SparseVector(indices, rng.integers(1, 4, size=12).astype(np.float32))


def with_words(points: list[VectorPoint]) -> list[VectorPoint]:
    return [replace(p, sparse={"words": words_of(p)}) if "image" in p.vectors else p
            for p in points]


def sparse_spec(name: str) -> CollectionSpec:
    return spec(name, sparse_vectors=["words"])


@pytest.fixture
def worded(backend: Backend) -> Iterator[str]:
    """A collection with the `words` sparse vector holding the whole synthetic catalog."""
    name = unique("words")
    backend.store.ensure_collection(sparse_spec(name))
    backend.store.upsert(name, with_words(CATALOG.points))
    yield name
    backend.store.drop_collection(name)


def test_sparse_words_find_the_image(backend: Backend, worded: str) -> None:
    target = CATALOG.product_points("p004")[1]
    hits = backend.store.search_fused(
        worded, [Prefetch("words", words_of(target))], Filters(), limit=5)
    assert hits[0].id == target.id
    assert hits[0].score == pytest.approx(1 / RRF_K, rel=1e-4)
    # Text-only points have no words and are never sparse candidates.
    assert all(h.payload.position >= 0 for h in backend.store.search_fused(
        worded, [Prefetch("words", words_of(target), depth=200)], Filters(), limit=200))


def test_sparse_words_are_weighted_by_idf(backend: Backend, fresh: str) -> None:
    """A word every image has counts for (almost) nothing; a rare one decides."""
    store = backend.store
    name = unique("idf")
    store.ensure_collection(sparse_spec(name))
    points = [p for p in CATALOG.points if "image" in p.vectors][:20]
    common, rare = 1, 2
    rows = []
    for i, p in enumerate(points):
        if i == 0:  # the common word many times
            words = SparseVector(np.array([common]), np.array([5.0], np.float32))
        elif i == 1:  # the rare word once, and the common word once
            words = SparseVector(np.array([common, rare]), np.array([1.0, 1.0], np.float32))
        else:
            words = SparseVector(np.array([common, 10 + i]), np.array([1.0, 1.0], np.float32))
        rows.append(replace(p, sparse={"words": words}))
    store.upsert(name, rows)
    query = SparseVector(np.array([common, rare]), np.array([1.0, 1.0], np.float32))
    hits = store.search_fused(name, [Prefetch("words", query)], Filters(), limit=3)
    assert hits[0].id == points[1].id, "without IDF the image with 5x the common word wins"
    store.drop_collection(name)


def test_fused_query_combines_dense_views_and_words(backend: Backend, worded: str) -> None:
    store = backend.store
    target = CATALOG.product_points("p003")[0]
    other = CATALOG.product_points("p008")[0]
    prefetches = [
        Prefetch("image", target.vectors["image"], depth=5),  # one view of the photo
        Prefetch("image", other.vectors["image"], depth=5),  # another, showing something else
        Prefetch("words", words_of(target), depth=5),
    ]
    hits = store.search_fused(worded, prefetches, Filters(), limit=10)
    assert hits[0].id == target.id
    assert 2 / RRF_K <= hits[0].score < 3 / RRF_K  # first in two of the three lists
    assert hits[1].id == other.id  # first in the other one
    returned = store.search_fused(worded, prefetches, Filters(), limit=3, with_vectors=["image"])
    assert set(returned[0].vectors) == {"image"}
    np.testing.assert_allclose(returned[0].vectors["image"], target.vectors["image"], atol=1e-5)
    with pytest.raises(InvalidInput):
        store.search_fused(worded, prefetches, Filters(), limit=3, with_vectors=["colour"])
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # The filter applies inside every prefetch: nothing outside it, even from the words.
    filters, predicate = FILTER_CASES["combined"]
    assert not predicate(target.payload)
    filtered = store.search_fused(worded, prefetches, filters, limit=20)
    assert filtered and all(predicate(h.payload) for h in filtered)
    assert target.id not in ids(filtered)


def test_fused_query_rejects_bad_input(backend: Backend, worded: str) -> None:
    store = backend.store
    good = words_of(CATALOG.points[0])
    bad = {
        "no prefetch": [],
        "unknown sparse": [Prefetch("colours", good)],
        "dense name as sparse": [Prefetch("image", good)],
        "unknown dense": [Prefetch("fused", np.ones(IMG, np.float32))],
        "repeated index": [Prefetch("words", SparseVector(np.array([3, 3]), np.ones(2)))],
        "negative index": [Prefetch("words", SparseVector(np.array([-1]), np.ones(1)))],
        "length mismatch": [Prefetch("words", SparseVector(np.array([1, 2]), np.ones(1)))],
        "NaN weight": [Prefetch("words", SparseVector(np.array([1]), np.array([np.nan])))],
        "zero depth": [Prefetch("words", good, depth=0)],
    }
    for case, prefetches in bad.items():
        with pytest.raises(InvalidInput):
            store.search_fused(worded, prefetches, Filters(), 5)
            pytest.fail(case)
    with pytest.raises(NotReady):
        store.search_fused(unique("missing"), [Prefetch("words", good)], Filters(), 5)


def test_sparse_vectors_added_to_an_existing_collection(backend: Backend, fresh: str) -> None:
    """The embedded store adds a sparse vector in place; a server cannot add a vector to a
    collection, so it says to reindex."""
    store = backend.store
    points = CATALOG.product_points("p001")
    store.upsert(fresh, points)
    with pytest.raises(InvalidInput):  # no such sparse vector yet
        store.upsert(fresh, with_words(points))
    if backend.kind != "edge":
        with pytest.raises(ConfigError, match="reindex"):
            store.ensure_collection(sparse_spec(fresh))
        return
    store.ensure_collection(sparse_spec(fresh))  # added in place, points kept
    assert store.count(fresh) == len(points)
    store.upsert(fresh, with_words(points))
    hits = store.search_fused(fresh, [Prefetch("words", words_of(points[1]))], Filters(), 1)
    assert hits[0].id == points[1].id
    assert store.search(fresh, "image", points[0].vectors["image"], Filters(), 1)[0].id \
        == points[0].id


# --- writes --------------------------------------------------------------------------------


def test_upsert_same_id_twice_is_one_point(backend: Backend, fresh: str) -> None:
    store = backend.store
    points = CATALOG.product_points("p002")
    store.upsert(fresh, points)
    assert store.count(fresh) == 3
    changed = replace(points[0], payload=replace(points[0].payload, colour="teal"))
    store.upsert(fresh, [changed])
    assert store.count(fresh) == 3
    hits = store.search(fresh, "image", points[0].vectors["image"], Filters(colours=["teal"]), 5)
    assert ids(hits) == [points[0].id]


def test_set_payload_changes_filters_not_vectors(backend: Backend, fresh: str) -> None:
    store = backend.store
    points = CATALOG.product_points("p005") + CATALOG.product_points("p006")
    store.upsert(fresh, points)
    cheap = Filters(price=PriceRange(max=1.0))
    assert store.count(fresh, cheap) == 0
    store.set_payload(
        fresh,
        [PayloadPatch("p005", {"price": 0.5, "in_stock": False, "category": "garden/tools"})],
    )
    n = len(CATALOG.product_points("p005"))
    assert store.count(fresh, cheap) == n
    assert store.count(fresh, Filters(category="garden")) == n
    assert store.count(fresh, Filters(in_stock_only=True)) == store.count(fresh) - n
    before = {p.payload.position: p.vectors["image"] for p in CATALOG.product_points("p005")}
    for pos, vec in store.get_vectors(fresh, "p005", "image"):
        np.testing.assert_allclose(vec, before[pos], atol=1e-5)
    hit = store.search(fresh, "image", before[0], cheap, 1)[0]
    assert hit.score == pytest.approx(1.0, abs=1e-4)
    assert (hit.payload.price, hit.payload.in_stock) == (0.5, False)
    assert hit.payload.category == ["garden", "garden/tools"]
    assert hit.payload.brand == CATALOG.product_points("p005")[0].payload.brand  # untouched
    with pytest.raises(InvalidInput, match="identify"):
        store.set_payload(fresh, [PayloadPatch("p005", {"product_id": "other"})])
    with pytest.raises(InvalidInput, match="unknown"):
        store.set_payload(fresh, [PayloadPatch("p005", {"colour_code": 3})])


def test_delete_products_is_immediate(backend: Backend, fresh: str) -> None:
    store = backend.store
    store.upsert(fresh, CATALOG.points[:30])
    victim = CATALOG.points[1]
    pid = victim.payload.product_id
    n = len(CATALOG.product_points(pid))
    assert store.search(fresh, "image", victim.vectors["image"], Filters(), 1)[0].id == victim.id
    store.delete_products(fresh, [pid, "no-such-product"])
    hits = store.search(fresh, "image", victim.vectors["image"], Filters(), 30)
    assert pid not in {h.payload.product_id for h in hits}
    assert store.count(fresh) == 30 - n
    assert store.get_vectors(fresh, pid, "image") == []
    store.delete_points(fresh, [CATALOG.points[0].id])
    assert CATALOG.points[0].id not in dict(store.scroll_payloads(fresh))
    assert store.count(fresh) == 30 - n - 1


def test_alias_switch(backend: Backend) -> None:
    store = backend.store
    old, new, alias = unique("v1"), unique("v2"), unique("products")
    store.ensure_collection(spec(old))
    store.ensure_collection(spec(new))
    store.upsert(old, CATALOG.product_points("p001"))
    store.upsert(new, CATALOG.product_points("p002"))
    query = CATALOG.product_points("p001")[0].vectors["image"]
    store.set_alias(alias, old)
    assert store.resolve(alias) == old
    assert store.resolve(old) == old
    assert store.search(alias, "image", query, Filters(), 1)[0].payload.product_id == "p001"
    store.set_alias(alias, new)
    assert store.resolve(alias) == new
    assert store.search(alias, "image", query, Filters(), 1)[0].payload.product_id == "p002"
    assert store.count(alias) == 3
    assert alias not in store.list_collections()
    with pytest.raises(ConfigError):
        store.set_alias(old, new)  # an alias may not hide a collection
    with pytest.raises(ConfigError, match="alias"):
        store.ensure_collection(spec(alias))  # nor a collection take an alias's name
    store.drop_collection(old)
    assert old not in store.list_collections()
    assert store.resolve(alias) == new
    store.drop_collection(new)
    assert store.resolve(alias) == alias  # dropping a collection drops its aliases
    store.drop_collection(new)  # no-op when missing


def test_concurrent_reads_and_writes(backend: Backend, fresh: str) -> None:
    store = backend.store
    errors: list[BaseException] = []
    chunks = [CATALOG.points[i::3] for i in range(3)]

    def writer(chunk: list[VectorPoint]) -> None:
        try:
            for start in range(0, len(chunk), 10):
                store.upsert(fresh, chunk[start : start + 10])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for p in CATALOG.points[:20]:
                store.search(fresh, "image", np.ones(IMG), Filters(in_stock_only=True), 3)
                store.count(fresh, Filters(merchants=[p.payload.merchant]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(c,)) for c in chunks]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count(fresh) == len(CATALOG.points)


# --- embedded store only -------------------------------------------------------------------


def test_edge_persists_and_has_one_owner(tmp_path: Path) -> None:
    root = tmp_path / "vectors"
    store = EdgeVectorStore(root)
    store.ensure_collection(spec("v1", quantize_int8=True))
    store.upsert("v1", CATALOG.points)
    store.set_payload("v1", [PayloadPatch("p004", {"price": 0.25})])
    store.delete_products("v1", ["p007"])
    store.build_index("v1")
    store.set_alias("products", "v1")
    expected_count = store.count("v1")
    with pytest.raises(StoreBusy, match=f"pid {os.getpid()}"):
        EdgeVectorStore(root)
    store.close()
    store.close()  # idempotent
    with pytest.raises(NotReady, match="closed"):
        store.count("v1")

    reopened = EdgeVectorStore(root)
    try:
        assert reopened.list_collections() == ["v1"]
        assert reopened.resolve("products") == "v1"
        assert reopened.count("products") == expected_count
        assert reopened.count("products", Filters(price=PriceRange(max=0.3))) == len(
            CATALOG.product_points("p004")
        )
        query = CATALOG.points[20].vectors["image"]
        hits = reopened.search("products", "image", query, Filters(), K)
        expected = CATALOG.expected("image", query, lambda p: p.product_id != "p007", K)
        assert ids(hits) == [i for i, _ in expected]
        # int8 quantisation with rescoring still reports exact cosines
        np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], atol=1e-4)
        with pytest.raises(ConfigError, match="exists with vectors"):
            reopened.ensure_collection(CollectionSpec("v1", {"image": 8}))
    finally:
        reopened.close()


def test_edge_rejects_bad_names(tmp_path: Path) -> None:
    with EdgeVectorStore(tmp_path) as store:
        for bad in ("", "../x", "aliases", "a/b", ".hidden"):
            with pytest.raises(ConfigError):
                store.ensure_collection(spec(bad))
        store.ensure_collection(spec("v1"))
        with pytest.raises(NotReady):
            store.set_alias("products", "v2")
        store.set_alias("products", "v1")
        with pytest.raises(ConfigError, match="alias"):
            store.ensure_collection(spec("products"))


def test_edge_finishes_an_interrupted_creation(tmp_path: Path) -> None:
    with EdgeVectorStore(tmp_path) as store:
        store.ensure_collection(spec("v1"))
        store.upsert("v1", CATALOG.points[:4])
    # A crash after the shard was created but before its spec was written.
    (tmp_path / "v1.json").unlink()
    with EdgeVectorStore(tmp_path) as store:
        assert store.list_collections() == []
        with pytest.raises(NotReady):
            store.count("v1")
        store.ensure_collection(spec("v1"))
        assert store.count("v1") == 4
        store.drop_collection("v1")
        assert store.list_collections() == []
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
