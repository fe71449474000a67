"""The text-search part of the vector-store contract, on qdrant-edge, the qdrant-client code
path in local mode and a real Qdrant server when QDRANT_URL is set: the `lexical` sparse
vector, exact SKU / title boosting, filters inside every prefetch, single-list scores and
facet counts (checked against a count over the same products in Python).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from backend.domain.lexical import LEXICAL, match_terms, product_fields, product_vector
from backend.domain.payload import product_payload
from backend.domain.text_search import exact_keys, search_text, text_prefetches
from backend.domain.types import Filters, ImageRef, PriceRange, Product
from backend.errors import InvalidInput
from backend.stores.vectors import CollectionSpec, Prefetch, VectorPoint, VectorStore, point_id
from backend.stores.vectors.base import FacetQuery
from tests.unit.test_vector_store_contract import _open

DIM = 16
MODEL = "m-text"
BRANDS = ["acme", "globex", "initech", "umbrella"]
COLOURS = ["red", "blue", "green", "black"]
MATERIALS = ["cotton", "wool", "leather"]
SIZES = ["S", "M", "XL"]
CATEGORIES = ["apparel/shirts", "apparel/shoes/boots", "home/kitchen", "toys"]
NOUNS = ["shirt", "boot", "kettle", "robot", "scarf", "mug"]


def make_products(n: int = 48) -> list[Product]:
    out = []
    for i in range(n):
        noun = NOUNS[i % len(NOUNS)]
        title = f"{COLOURS[i % 4].title()} {noun} model {i}"
        if i in (5, 11):
            title = "Twin title lamp"  # two products share a title
        if i == 7:
            title = "红色 棉 衬衫"
        images = [ImageRef("x", p) for p in range(1 + i % 2)]  # 1 or 2 images (points)
        out.append(Product(
            product_id=f"p{i:02d}", sku=f"{BRANDS[i % 4][:3].upper()}-{1000 + i}-X",
            merchant=f"m{i % 2}", title=title, description=f"A fine {noun}.",
            category=CATEGORIES[i % 4], brand=BRANDS[i % 4], size=SIZES[i % 3],
            material=MATERIALS[i % 3], colour=COLOURS[i % 4], price=float(5 + 13 * i % 300),
            currency="EUR", images=images, inventory=[], attributes={}, listed=True,
            catalog_version=1))
    return out


PRODUCTS = make_products()


def dense_vectors(seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for p in PRODUCTS:
        v = rng.normal(size=DIM).astype(np.float32)
        out[p.product_id] = v / np.linalg.norm(v)
    return out


DENSE = dense_vectors()


def points() -> list[VectorPoint]:
    out = []
    for p in PRODUCTS:
        lexical = product_vector(p)
        assert lexical is not None
        for ref in p.images:
            out.append(VectorPoint(point_id(p.product_id, ref.position, MODEL),
                                   {"text": DENSE[p.product_id]},
                                   product_payload(p, ref.position, MODEL),
                                   {LEXICAL: lexical}))
    return out


@dataclass
class Backend:
    kind: str
    store: VectorStore
    collection: str


@pytest.fixture(scope="module", params=["edge", "local",
                                        pytest.param("server", marks=pytest.mark.qdrant_server)])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Backend]:
    tmp: Path = tmp_path_factory.mktemp(request.param)
    store = _open(request.param, tmp)
    name = f"text_{uuid.uuid4().hex[:10]}"
    store.ensure_collection(CollectionSpec(name, {"text": DIM}, sparse_vectors=[LEXICAL]))
    store.upsert(name, points())
    yield Backend(request.param, store, name)
    store.drop_collection(name)
    store.close()


def search(backend: Backend, text: str, dense: np.ndarray, filters: Filters | None = None,
           limit: int = 10) -> list[str]:
    from backend.config import SearchSettings
    hits = search_text(backend.store, backend.collection, text, dense, filters or Filters(),
                       limit, SearchSettings())
    return list(dict.fromkeys(h.payload.product_id for h in hits))


def far_from(product_id: str) -> np.ndarray:
    """A dense query pointing away from the product: only the lexical side can find it."""
    return -DENSE[product_id]


@pytest.mark.parametrize("typed", ["GLO-1001-X", "glo1001x", "ＧＬＯ－１００１－Ｘ"])
def test_exact_sku_ranks_first_against_the_dense_vector(backend: Backend, typed: str) -> None:
    assert search(backend, typed, far_from("p01"))[0] == "p01"


def test_exact_title_ranks_every_product_sharing_it_first(backend: Backend) -> None:
    found = search(backend, "twin TITLE lamp!", DENSE["p00"])
    assert set(found[:2]) == {"p05", "p11"}


def test_lexical_finds_brand_words_and_chinese_attributes(backend: Backend) -> None:
    brand = search(backend, "initech", far_from("p02"), limit=60)
    assert set(brand[:12]) == {p.product_id for p in PRODUCTS if p.brand == "initech"}
    # "红色" names the colour red: every red product matches it lexically, in either language.
    lexical = [pf for pf in text_prefetches("红色", DENSE["p00"], 60) if pf.name == LEXICAL]
    hits = backend.store.search_fused(backend.collection, lexical, Filters(), 60,
                                      fusion="none")
    red = list(dict.fromkeys(h.payload.product_id for h in hits))
    # p07 is black, but its Chinese title says red: lexically it is red too. Nothing else
    # matches.
    assert set(red) == {p.product_id for p in PRODUCTS if p.colour == "red"} | {"p07"}


def _lexical_ids(backend: Backend, text: str) -> set[str]:
    lexical = [pf for pf in text_prefetches(text, DENSE["p00"], 60) if pf.name == LEXICAL]
    hits = backend.store.search_fused(backend.collection, lexical, Filters(), 60,
                                      fusion="none")
    return {h.payload.product_id for h in hits}


def test_chinese_product_words_find_the_english_titles(backend: Backend) -> None:
    """"衬衫" (shirt) and "马克杯" (mug) match the English product text through the
    bilingual lexicon, as "shirt" and "mug" do; "衬衫" also finds p07's Chinese title."""

    def saying(word: str) -> set[str]:
        return {p.product_id for p in PRODUCTS
                if word in f"{p.title} {p.category} {p.description}".lower()}

    shirts = saying("shirt")
    assert shirts and _lexical_ids(backend, "衬衫") == shirts | {"p07"}
    assert _lexical_ids(backend, "shirt") == shirts | {"p07"}
    mugs = saying("mug")
    assert mugs and _lexical_ids(backend, "马克杯") == _lexical_ids(backend, "mug") == mugs


def test_filters_apply_inside_every_prefetch(backend: Backend) -> None:
    """The exact SKU's product is outside the filter: neither the exact list nor the lexical
    one may bring it back, and every hit passes the filter."""
    filters = Filters(brands=["acme"], price=PriceRange(max=200.0))
    found = search(backend, "GLO-1001-X", DENSE["p01"], filters, limit=40)
    allowed = {p.product_id for p in PRODUCTS if p.brand == "acme" and p.price <= 200.0}
    assert found and "p01" not in found and set(found) <= allowed


def test_one_list_keeps_its_own_scores(backend: Backend) -> None:
    prefetches = text_prefetches("wool scarf", DENSE["p04"], 50)
    lexical = [pf for pf in prefetches if pf.name == LEXICAL]
    hits = backend.store.search_fused(backend.collection, lexical, Filters(), 5, fusion="none")
    assert hits[0].score > 1.0  # an IDF-weighted BM25 dot product, not a reciprocal rank
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    dense = backend.store.search_fused(backend.collection, [Prefetch("text", DENSE["p04"])],
                                       Filters(), 1, fusion="none")
    assert dense[0].payload.product_id == "p04"
    assert dense[0].score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(InvalidInput):
        backend.store.search_fused(backend.collection, prefetches, Filters(), 5, fusion="none")
    with pytest.raises(InvalidInput):
        backend.store.search_fused(backend.collection, prefetches, Filters(), 5, fusion="max")


def test_dbsf_fusion_and_boost(backend: Backend) -> None:
    prefetches = text_prefetches("UMB-1003-X", far_from("p03"), 50)
    hits = backend.store.search_fused(backend.collection, prefetches, Filters(), 5,
                                      fusion="dbsf", boost=exact_keys("UMB-1003-X"))
    assert hits[0].payload.product_id == "p03"


def expected_facets(text: str, filters_ok: object, top: list[str], key: str) -> Counter[str]:
    wanted = set(match_terms(text))
    counts: Counter[str] = Counter()
    for p in PRODUCTS:
        have = {t for f in product_fields(p).values() for t in f}
        if not filters_ok(p) or not ((wanted and wanted <= have) or p.product_id in top):  # type: ignore[operator]
            continue
        if key == "category":
            parts = p.category.split("/")
            counts.update("/".join(parts[:i + 1]) for i in range(len(parts)))
        else:
            counts[str(getattr(p, key)).lower() if key != "merchant" else p.merchant] += 1
    return counts


@pytest.mark.parametrize("text", ["red cotton", "boot", "红色", "nothing-matches-this"])
def test_facets_count_products_matching_the_text_or_in_the_top_hits(
        backend: Backend, text: str) -> None:
    top = ["p01", "p02", "p03"]
    filters = Filters(price=PriceRange(max=250.0))
    query = FacetQuery(filters, match_terms(text), top,
                       ["category", "brand", "colour", "size", "material", "merchant"],
                       price_bands=[(0.0, 100.0), (100.0, None)])
    got = backend.store.facets(backend.collection, query)
    def ok(p: Product) -> bool:
        return p.price <= 250.0
    for key in query.keys:
        assert dict(got[key]) == dict(expected_facets(text, ok, top, key)), key
    population = sum(expected_facets(text, ok, top, "brand").values())
    assert sum(n for _, n in got["price"]) == population  # products, not images
    assert [label for label, _ in got["price"]] == ["0-100", "100+"]
    with pytest.raises(InvalidInput):
        backend.store.facets(backend.collection, FacetQuery(filters, [], top, ["title"]))
