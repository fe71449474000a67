"""SearchService over fakes of its ports: ranking, grouping per product, paging, filters,
scoping by principal and the catalog-version guard, without SQL, Qdrant or model weights."""

from __future__ import annotations

import asyncio

import pytest

from backend.config import SearchSettings
from backend.domain.search import SearchQuery, SearchService
from backend.domain.types import Filters, PriceRange, SearchResult
from backend.domain.vectors import RRF_K
from backend.errors import InvalidInput, NotFound, NotReady
from backend.security import Principal, Role, acting_as
from tests.fake_ports import FakeCatalog, MemoryVectorStore, make_product, vector_at
from tests.fakes import FakeEncoder

COLLECTION = "products"
QUERY = "red running shoe"


class World:
    """Five products whose text vectors sit at known cosines to the query text."""

    def __init__(self, **settings: object) -> None:
        self.encoder = FakeEncoder(dim=32)
        self.query_vector = self.encoder.encode_many([None], [QUERY])[0]["text"]
        self.catalog = FakeCatalog([
            make_product("a", category="Shoes/Running", colour="Red", price=80),
            make_product("b", category="Shoes/Running", colour="Blue", price=40),
            make_product("c", category="Shoes/Trail", colour="red", price=120),
            make_product("d", category="Bags", merchant="other", listed=False, price=20),
            make_product("e", category="Bags", price=30, images=2),
        ], indexed=7)
        self.vectors = MemoryVectorStore()
        cosines = {"a": [0.9], "b": [0.8], "c": [0.7], "d": [0.95], "e": [0.5, 0.85]}
        for i, (pid, per_image) in enumerate(cosines.items()):
            self.vectors.add_product(COLLECTION, self.catalog.products[pid], [
                {"text": vector_at(self.query_vector, c, seed=10 * i + j),
                 "image": vector_at(self.query_vector, c, seed=10 * i + j + 5)}
                for j, c in enumerate(per_image)])
        self.service = SearchService(self.catalog, self.vectors, self.encoder, COLLECTION,
                                     SearchSettings(**settings))  # type: ignore[arg-type]
        self.service.ready = True

    def search(self, **query: object) -> SearchResult:
        return asyncio.run(self.service.search(SearchQuery(**query)))  # type: ignore[arg-type]


def ids(result: SearchResult) -> list[str]:
    return [h.product.product_id for h in result.hits]


def test_text_search_ranks_products_by_their_best_image() -> None:
    world = World()
    result = world.search(text=QUERY, top_k=10)
    assert ids(result) == ["d", "a", "e", "b", "c"]
    e = result.hits[2]
    assert e.matched_image == -1  # a text query matched no image
    # Text is fused in the store (dense + lexical lists; the fake models the dense one): e
    # scores as its best point, third in the dense list, not as its other one.
    assert e.score == pytest.approx(1.0 / (RRF_K + 2))
    assert result.catalog_version == 7  # what the index reflects, not the newest write
    assert result.model_version == world.encoder.model_version
    assert result.next_page_token == ""


def test_pages_continue_without_repeats_or_gaps() -> None:
    world = World()
    first = world.search(text=QUERY, top_k=2)
    second = world.search(text=QUERY, top_k=2, page_token=first.next_page_token)
    third = world.search(text=QUERY, top_k=2, page_token=second.next_page_token)
    assert ids(first) + ids(second) + ids(third) == ["d", "a", "e", "b", "c"]
    assert first.next_page_token and second.next_page_token
    assert third.next_page_token == ""


def test_filters_match_case_insensitively_and_whole_category_subtrees() -> None:
    world = World()
    assert ids(world.search(text=QUERY, filters=Filters(category="SHOES"))) == ["a", "b", "c"]
    assert ids(world.search(text=QUERY, filters=Filters(colours=["RED "]))) == ["a", "c"]
    assert ids(world.search(text=QUERY, filters=Filters(
        category="shoes/running", price=PriceRange(max=50)))) == ["b"]


def test_an_unknown_category_is_not_found() -> None:
    with pytest.raises(NotFound, match="unknown category"):
        World().search(text=QUERY, filters=Filters(category="Hats"))


def test_a_storefront_key_sees_listed_products_and_its_own_merchants() -> None:
    world = World()
    with acting_as(Principal(Role.STOREFRONT, merchants=("acme",))):
        assert "d" not in ids(world.search(text=QUERY))
        # The scope is part of the vector query, not a filter applied to a short page.
        assert world.vectors.searches[-1][1].listed_or_merchants == ["acme"]
    with acting_as(Principal(Role.STOREFRONT, merchants=("Other",))):
        assert ids(world.search(text=QUERY, top_k=1)) == ["d"]


def test_a_product_gone_from_the_catalog_is_left_out() -> None:
    world = World()
    del world.catalog.products["a"]  # deleted; the index has not caught up yet
    assert ids(world.search(text=QUERY)) == ["d", "e", "b", "c"]


def test_more_like_this_searches_the_products_vector_and_leaves_it_out() -> None:
    world = World()
    result = world.search(product_id="a")
    assert "a" not in ids(result)
    name, filters = world.vectors.searches[-1]
    assert name == "image" and filters.exclude_product_ids == ["a"]
    with pytest.raises(NotFound):
        world.search(product_id="nope")


def test_a_catalog_version_not_indexed_yet_is_not_ready() -> None:
    world = World()
    assert world.search(text=QUERY, min_catalog_version=7).hits
    with pytest.raises(NotReady, match="not indexed yet"):
        world.search(text=QUERY, min_catalog_version=8)


def test_a_cold_service_refuses_and_bad_queries_are_invalid() -> None:
    world = World(default_top_k=3, max_top_k=5, max_result_window=6)
    with pytest.raises(InvalidInput, match="empty query"):
        world.search()
    with pytest.raises(InvalidInput, match="cannot be combined"):
        world.search(product_id="a", text=QUERY)
    with pytest.raises(InvalidInput, match="top_k"):
        world.search(text=QUERY, top_k=6)
    with pytest.raises(InvalidInput, match="min_price"):
        world.search(text=QUERY, filters=Filters(price=PriceRange(min=float("nan"))))
    page = world.search(text=QUERY, top_k=4).next_page_token
    with pytest.raises(InvalidInput, match="paged through"):
        world.search(text=QUERY, top_k=4, page_token=page)
    with pytest.raises(InvalidInput, match="page_token"):
        world.search(text=QUERY, page_token="garbage")
    world.service.ready = False
    searches = len(world.vectors.searches)
    with pytest.raises(NotReady, match="warming up"):
        world.search(text=QUERY)
    assert len(world.vectors.searches) == searches  # refused before any work


def test_the_query_text_is_encoded_once_per_search() -> None:
    world = World()
    world.encoder.ran.clear()
    world.search(text=f"  {QUERY} ")
    assert world.encoder.ran == [QUERY]  # trimmed, one forward pass
