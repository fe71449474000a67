"""Read-your-writes: every write returns the catalog version it produced; a search that
passes it as min_catalog_version either reflects the write or gets UNAVAILABLE (retryable),
and every search response says which catalog version it reflects."""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from backend.demo import photo_of
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from tests.integration.conftest import Running


def _search_at_least(running: Running, version: int, request: pb.SearchRequest,
                     budget_s: float = 30.0) -> tuple[pb.SearchResponse, int]:
    """Search with min_catalog_version=version, retrying UNAVAILABLE as a client would.
    Returns the response and how many UNAVAILABLE answers came first."""
    request.min_catalog_version = version
    deadline = time.monotonic() + budget_s
    unavailable = 0
    while True:
        try:
            response: pb.SearchResponse = running.search.Search(request, timeout=30)
            return response, unavailable
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            assert "not indexed yet" in (exc.details() or "")
            unavailable += 1
            assert time.monotonic() < deadline, "the write was not indexed in time"
            time.sleep(0.02)


def test_every_response_reflects_a_version(running: Running) -> None:
    current = running.app.catalog.catalog_version()
    reply = running.search.Search(pb.SearchRequest(text="flower", top_k=3), timeout=30)
    assert 0 < reply.catalog_version <= current
    assert reply.model_version == running.app.encoder.model_version


def test_upsert_then_search_reads_the_write(running: Running) -> None:
    source = Path(str(running.catalog[13]["images"][0]))  # type: ignore[index]
    new = pb.Product(
        sku="RYW-1", merchant="ryw", title="Read your writes kettle", category="tests/ryw",
        colour="green", material="steel", size="L", brand="Acme",
        price=pb.Money(amount=20.0, currency="EUR"),
        images=[pb.ProductImage(content=source.read_bytes())],
        inventory=[pb.StockLevel(warehouse="berlin", bin="B-2", quantity=5, reorder_point=1)],
    )
    written = running.writes.UpsertProducts(iter([new]), timeout=30)
    product_id = written.product_ids[0]
    assert written.catalog_version > 0
    # Immediately: the indexer has not necessarily caught up; the answer is either the write
    # or UNAVAILABLE, never a silent stale result.
    found, _ = _search_at_least(
        running, written.catalog_version,
        pb.SearchRequest(image=photo_of(source), top_k=3, filters=pb.Filters(merchants=["ryw"])))
    assert found.catalog_version >= written.catalog_version
    assert [h.product.product_id for h in found.hits] == [product_id]

    # A price change (payload only) is read back the same way.
    changed = running.writes.UpdateInventory(pb.UpdateInventoryRequest(updates=[
        pb.InventoryUpdate(product_id=product_id, warehouse="berlin", bin="B-2", quantity=0,
                           price=pb.Money(amount=99.0, currency="EUR"))]), timeout=30)
    assert changed.catalog_version > written.catalog_version
    found, _ = _search_at_least(
        running, changed.catalog_version,
        pb.SearchRequest(text="Read your writes kettle", top_k=3,
                         filters=pb.Filters(merchants=["ryw"],
                                            price=pb.PriceRange(min=90, max=100))))
    assert found.catalog_version >= changed.catalog_version
    assert [h.product.product_id for h in found.hits] == [product_id]
    assert found.hits[0].product.price.amount == 99.0
    in_stock, _ = _search_at_least(
        running, changed.catalog_version,
        pb.SearchRequest(text="Read your writes kettle", top_k=3,
                         filters=pb.Filters(merchants=["ryw"], in_stock_only=True)))
    assert not in_stock.hits

    deleted = running.writes.DeleteProducts(pb.DeleteProductsRequest(product_ids=[product_id]),
                                            timeout=30)
    gone, _ = _search_at_least(
        running, deleted.catalog_version,
        pb.SearchRequest(text="Read your writes kettle", top_k=3,
                         filters=pb.Filters(merchants=["ryw"])))
    assert not gone.hits


def test_a_future_version_is_unavailable_and_retryable(running: Running) -> None:
    future = running.app.catalog.catalog_version() + 1000
    try:
        running.search.Search(pb.SearchRequest(text="flower", min_catalog_version=future),
                              timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE
        assert f"catalog version {future} is not indexed yet" in (exc.details() or "")
    else:
        raise AssertionError("a version nobody wrote yet must not be answered")
