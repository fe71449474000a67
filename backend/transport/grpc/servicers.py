"""gRPC servicers: convert, call the domain service, convert back. Errors go through the one
table in errors.py."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from backend.domain.catalog import CatalogService
from backend.domain.lookup import ProductLookup
from backend.domain.match import MatchService
from backend.domain.ports import ProductReader
from backend.domain.restock import RestockService
from backend.domain.search import SearchService
from backend.domain.types import Product
from backend.errors import InvalidInput
from backend.security import current as current_principal
from backend.transport.grpc import convert
from backend.transport.grpc.errors import status_for
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2_grpc as rpc

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def mapped_errors(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Turn domain errors into status codes; anything unexpected into INTERNAL + a logged
    traceback (the client never sees internals)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = status_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("unexpected error in %s", method.__name__)
            await context.abort(code, message)
            raise  # unreachable: abort raises

    return wrapper


def _product_pb(product: Product) -> pb.Product:
    """A product as the caller may see it: no server paths, no other warehouses' stock."""
    return convert.product_to_pb(current_principal().redact(product))


class ProductSearchServicer(rpc.ProductSearchServicer):
    def __init__(
        self,
        search: SearchService,
        catalog: ProductReader,
        match: MatchService,
        restock: RestockService,
    ) -> None:
        self._search = search
        self._products = ProductLookup(catalog)
        self._match = match
        self._restock = restock

    @mapped_errors
    async def Search(
        self, request: pb.SearchRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchResponse:
        result = await self._search.search(convert.search_query_from_pb(request))
        return pb.SearchResponse(
            hits=[
                pb.SearchHit(
                    product=_product_pb(h.product),
                    score=h.score,
                    matched_image=h.matched_image,
                    box=convert.box_to_pb(h.box),
                    score_parts=h.parts,
                )
                for h in result.hits
            ],
            next_page_token=result.next_page_token,
            model_version=result.model_version,
            catalog_version=result.catalog_version,
            facets=convert.facets_to_pb(result.facets),
        )

    @mapped_errors
    async def GetProduct(
        self, request: pb.GetProductRequest, context: grpc.aio.ServicerContext
    ) -> pb.Product:
        product = await self._products.get(request.product_id, request.merchant, request.sku)
        return _product_pb(product)

    @mapped_errors
    async def MatchProduct(
        self, request: pb.MatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.MatchResponse:
        results = await self._match.match(convert.listing_from_pb(request.listing),
                                          request.top_k)
        return pb.MatchResponse(
            candidates=[
                pb.MatchCandidate(
                    product=_product_pb(r.product),
                    verdict=pb.Verdict.Value(r.verdict),
                    probability=r.probability,
                    similarity=r.similarity,
                    diff=[pb.AttributeDiff(field=d.field, listing_value=d.listing_value,
                                           catalog_value=d.catalog_value) for d in r.diff],
                )
                for r in results
            ],
            model_version=self._search.model_version,
        )

    @mapped_errors
    async def FindRestockMatches(
        self, request: pb.RestockRequest, context: grpc.aio.ServicerContext
    ) -> pb.RestockResponse:
        matches = await self._restock.find(request.image, request.warehouse, request.bin,
                                           request.top_k)
        return pb.RestockResponse(
            matches=[
                pb.RestockMatch(
                    product=_product_pb(m.product),
                    score=m.score,
                    box=convert.known_box_to_pb(m.box),
                    stock=[convert.stock_to_pb(s) for s in m.stock],
                    low_stock=m.low_stock,
                    facings=m.facings,
                    facing_boxes=[convert.known_box_to_pb(b) for b in m.facing_boxes],
                )
                for m in matches
            ],
            model_version=self._search.model_version,
        )


class CatalogServicer(rpc.CatalogServicer):
    def __init__(self, catalog: CatalogService, max_batch: int = 1000) -> None:
        self._catalog = catalog
        self._max_batch = max_batch

    @mapped_errors
    async def UpsertProducts(
        self, request_iterator: AsyncIterator[pb.Product], context: grpc.aio.ServicerContext
    ) -> pb.UpsertProductsResponse:
        # Product by product: each message's uploads go to temporary files as it arrives, so
        # memory holds one message, not the stream; close() drops them unless committed.
        batch = self._catalog.begin_upsert()
        try:
            async for message in request_iterator:
                if len(batch.items) >= self._max_batch:
                    raise InvalidInput(f"at most {self._max_batch} products per call")
                await asyncio.to_thread(batch.add, convert.product_input_from_pb(message))
            outcomes = await asyncio.to_thread(batch.commit)
        finally:
            await asyncio.to_thread(batch.close)
        return pb.UpsertProductsResponse(
            upserted=sum(1 for o in outcomes if o.changed),
            product_ids=[o.product_id for o in outcomes],
            catalog_version=max((o.catalog_version for o in outcomes), default=0),
        )

    @mapped_errors
    async def DeleteProducts(
        self, request: pb.DeleteProductsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteProductsResponse:
        deleted, version = await asyncio.to_thread(
            self._catalog.delete, list(request.product_ids)
        )
        return pb.DeleteProductsResponse(deleted=deleted, catalog_version=version)

    @mapped_errors
    async def UpdateInventory(
        self, request: pb.UpdateInventoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateInventoryResponse:
        changes = [convert.inventory_change_from_pb(u) for u in request.updates]
        updated, version = await asyncio.to_thread(self._catalog.update_inventory, changes)
        return pb.UpdateInventoryResponse(updated=updated, catalog_version=version)
