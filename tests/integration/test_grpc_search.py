"""Search over a real gRPC server on 127.0.0.1, called through the generated stubs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from backend.demo import photo_of
from backend.stores.vectors.base import BOOST
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from tests.integration.conftest import Running

K = 5


def search(running: Running, **kwargs: object) -> pb.SearchResponse:
    response: pb.SearchResponse = running.search.Search(pb.SearchRequest(**kwargs), timeout=30)
    return response


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_health_is_serving(running: Running) -> None:
    stub = health_pb2_grpc.HealthStub(running.channel)
    for service in ("", "product_search.v1.ProductSearch", "product_search.v1.Catalog"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(running: Running) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"product_search.v1.ProductSearch", "product_search.v1.Catalog",
            "grpc.health.v1.Health"} <= names


def test_photo_of_a_catalog_item_finds_it_first(running: Running) -> None:
    hits_first = 0
    items = running.catalog[::10]
    for n, item in enumerate(items):
        photo = photo_of(Path(str(item["images"][0])), seed=n)  # type: ignore[index]
        response = search(running, image=photo, top_k=K)
        assert len(response.hits) == K
        hits_first += response.hits[0].product.sku == item["sku"]
        assert response.hits[0].matched_image == 0
    # Real photos-of-items (rotated, off-centre, noisy background). The dense path alone
    # finds at least 6 of 8 first in this small catalog; search's vote + dense ranking
    # (a scorer fitted on harder photos at catalog scale, where it wins) finds 5: a known
    # regression on easy photos in a small catalog, see README "Model quality".
    assert hits_first >= 0.6 * len(items), f"{hits_first}/{len(items)} found first"


def test_text_search_ranks_by_fused_score_and_hydrates(running: Running) -> None:
    response = search(running, text="animal", top_k=K)
    scores = [h.score for h in response.hits]
    assert scores == sorted(scores, reverse=True)
    # Fused dense and lexical scores; no exact SKU / title / brand match to boost.
    assert all(s < BOOST for s in scores)
    product = response.hits[0].product
    assert product.sku and product.title and product.images and product.price.currency
    assert response.model_version == running.app.encoder.model_version


def test_image_and_text_together(running: Running) -> None:
    item = running.catalog[7]
    photo = photo_of(Path(str(item["images"][0])), seed=1)  # type: ignore[index]
    response = search(running, image=photo, text=str(item["title"]), top_k=K)
    assert response.hits[0].product.sku == item["sku"]


FILTER_CASES: dict[str, tuple[str, Callable[[pb.Product, str], bool]]] = {
    "size": ("size", lambda p, v: p.size.lower() == v.lower()),
    "material": ("material", lambda p, v: p.material.lower() == v.lower()),
    "colour": ("colour", lambda p, v: p.colour.lower() == v.lower()),
    "brand": ("brand", lambda p, v: p.brand.lower() == v.lower()),
    "merchant": ("merchant", lambda p, v: p.merchant.lower() == v.lower()),
}


@pytest.mark.parametrize("field", sorted(FILTER_CASES))
def test_keyword_filter_returns_only_matches_beyond_unfiltered_top_k(
    running: Running, field: str
) -> None:
    attr, matches = FILTER_CASES[field]
    query = "a useful thing"
    # The largest k whose unfiltered top k misses some value of this field (2 merchants only
    # leave k=1); the filtered top k must then be made of products the unfiltered one missed.
    for k in range(K, 0, -1):
        top = search(running, text=query, top_k=k).hits
        values = {str(p[attr]).lower() for p in running.catalog} - {
            getattr(h.product, attr).lower() for h in top}
        if values:
            break
    assert values, f"every {field} value is in the unfiltered top 1"
    value = sorted(values)[0]
    hits = search(running, text=query, top_k=k,
                  filters=pb.Filters(where={field: value.upper()})).hits
    expected = sum(1 for p in running.catalog if str(p[attr]).lower() == value)
    assert len(hits) == min(k, expected)
    assert all(matches(h.product, value) for h in hits)


def test_category_prefix_matches_the_subtree(running: Running) -> None:
    leaf = next(str(p["category"]) for p in running.catalog if "/" in str(p["category"]))
    top_level = leaf.split("/")[0]
    hits = search(running, text="thing", top_k=50,
                  filters=pb.Filters(category=top_level)).hits
    assert hits and all(h.product.category.split("/")[0] == top_level for h in hits)
    expected = sum(1 for p in running.catalog if str(p["category"]).split("/")[0] == top_level)
    assert len(hits) == min(50, expected)
    assert any(h.product.category == leaf for h in hits)


def test_price_range_and_in_stock(running: Running) -> None:
    hits = search(
        running, text="thing", top_k=50,
        filters=pb.Filters(price=pb.PriceRange(min=20, max=60), in_stock_only=True),
    ).hits
    expected = [
        p for p in running.catalog
        if 20 <= float(p["price"]) <= 60  # type: ignore[arg-type]
        and any(level["quantity"] > 0 for level in p["inventory"])  # type: ignore[attr-defined]
    ]
    assert len(hits) == min(50, len(expected))
    for hit in hits:
        assert 20 <= hit.product.price.amount <= 60
        assert any(level.quantity > 0 for level in hit.product.inventory)


def test_pages_do_not_repeat(running: Running) -> None:
    first = search(running, text="thing", top_k=5)
    second = search(running, text="thing", top_k=5, page_token=first.next_page_token)
    assert first.next_page_token
    ids_first = {h.product.product_id for h in first.hits}
    assert not ids_first & {h.product.product_id for h in second.hits}


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {},
        {"text": "   "},
        {"image": b"definitely not an image"},
        {"image": b"\x89PNG\r\n\x1a\n" + b"\x00" * 20},
        {"text": "cat", "top_k": -1},
        {"text": "cat", "top_k": 10_000},
        {"text": "cat", "filters": pb.Filters(where={"weight": "3"})},
        {"text": "cat", "filters": pb.Filters(price=pb.PriceRange(min=50, max=10))},
        {"text": "cat", "filters": pb.Filters(price=pb.PriceRange(min=float("nan")))},
        {"text": "x" * 5000},
        {"text": "cat", "page_token": "garbage!"},
    ],
    ids=["empty", "blank-text", "non-image", "truncated-png", "top_k-negative",
         "top_k-10000", "unknown-field", "min-gt-max", "nan-price", "text-too-long",
         "bad-page-token"],
)
def test_bad_requests_are_invalid_argument(running: Running, request_kwargs: dict[str, object]
                                           ) -> None:
    assert status_of(lambda: search(running, **request_kwargs)) == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_category_and_product_are_not_found(running: Running) -> None:
    assert status_of(lambda: search(running, text="cat", filters=pb.Filters(
        category="no/such/category"))) == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: running.search.GetProduct(
        pb.GetProductRequest(product_id="nope"), timeout=5)) == grpc.StatusCode.NOT_FOUND


def test_get_product_by_sku(running: Running) -> None:
    item = running.catalog[3]
    product = running.search.GetProduct(
        pb.GetProductRequest(sku=str(item["sku"]), merchant=str(item["merchant"])), timeout=5
    )
    assert product.title == item["title"]
    assert product.images[0].uri == item["images"][0]  # type: ignore[index]


def _wait_indexed(running: Running, version: int) -> None:
    deadline = time.monotonic() + 30
    while running.app.catalog.indexed_version() < version:
        assert time.monotonic() < deadline, "indexer did not catch up in 30 s"
        time.sleep(0.05)


def test_upsert_search_delete_round_trip(running: Running) -> None:
    source = Path(str(running.catalog[11]["images"][0]))  # type: ignore[index]
    new = pb.Product(
        sku="RT-1", merchant="round-trip", title="Round trip lamp", category="tests/round",
        colour="teal", material="glass", size="M", brand="Acme",
        price=pb.Money(amount=12.5, currency="EUR"),
        images=[pb.ProductImage(content=source.read_bytes())],
        inventory=[pb.StockLevel(warehouse="berlin", bin="A-1", quantity=3, reorder_point=1)],
    )
    reply = running.writes.UpsertProducts(iter([new]), timeout=30)
    assert reply.upserted == 1 and len(reply.product_ids) == 1
    product_id = reply.product_ids[0]
    # Read-your-writes: once indexed, the new product is found with its own photo.
    _wait_indexed(running, reply.catalog_version)
    found = search(running, image=photo_of(source), top_k=3,
                   filters=pb.Filters(merchants=["round-trip"]),
                   min_catalog_version=reply.catalog_version)
    assert [h.product.product_id for h in found.hits] == [product_id]

    # The same write again changes nothing.
    again = running.writes.UpsertProducts(iter([new]), timeout=30)
    assert again.upserted == 0 and again.product_ids[0] == product_id

    deleted = running.writes.DeleteProducts(
        pb.DeleteProductsRequest(product_ids=[product_id]), timeout=30)
    assert deleted.deleted == 1
    # Gone from search as soon as the call returned: no waiting.
    after = search(running, text="Round trip lamp", top_k=3,
                   filters=pb.Filters(merchants=["round-trip"]))
    assert not after.hits


def test_inventory_update_is_visible_to_the_next_filtered_search(running: Running) -> None:
    item = running.catalog[21]
    product = running.search.GetProduct(
        pb.GetProductRequest(sku=str(item["sku"]), merchant=str(item["merchant"])), timeout=5)
    updates = [pb.InventoryUpdate(product_id=product.product_id, warehouse=level.warehouse,
                                  bin=level.bin, quantity=0) for level in product.inventory]
    reply = running.writes.UpdateInventory(pb.UpdateInventoryRequest(updates=updates),
                                           timeout=10)
    _wait_indexed(running, reply.catalog_version)
    in_stock = search(running, text=str(item["title"]), top_k=50,
                      filters=pb.Filters(in_stock_only=True))
    assert product.product_id not in {h.product.product_id for h in in_stock.hits}

    restock = pb.InventoryUpdate(product_id=product.product_id, warehouse="berlin", bin="Z-9",
                                 quantity=40)
    reply = running.writes.UpdateInventory(pb.UpdateInventoryRequest(updates=[restock]),
                                           timeout=10)
    _wait_indexed(running, reply.catalog_version)
    in_stock = search(running, text=str(item["title"]), top_k=50,
                      filters=pb.Filters(in_stock_only=True))
    assert product.product_id in {h.product.product_id for h in in_stock.hits}


def test_catalog_writes_reject_bad_input_and_store_nothing(running: Running) -> None:
    before = running.app.catalog.catalog_version()
    dup = [pb.Product(sku="D-1", merchant="m", title="a"),
           pb.Product(sku="D-1", merchant="m", title="b")]
    assert status_of(lambda: running.writes.UpsertProducts(iter(dup), timeout=10)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    bad_image = [pb.Product(sku="B-1", merchant="m", title="bad",
                            images=[pb.ProductImage(content=b"GIF89a-not-really")])]
    assert status_of(lambda: running.writes.UpsertProducts(iter(bad_image), timeout=10)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    negative = [pb.Product(sku="N-1", merchant="m", title="neg",
                           price=pb.Money(amount=-1, currency="EUR"))]
    assert status_of(lambda: running.writes.UpsertProducts(iter(negative), timeout=10)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(lambda: running.writes.UpdateInventory(pb.UpdateInventoryRequest(
        updates=[pb.InventoryUpdate(product_id="nope", warehouse="w", quantity=1)]),
        timeout=10)) == grpc.StatusCode.NOT_FOUND
    assert running.app.catalog.catalog_version() == before
