"""Search: photo, text, both, or "more like this", filtered inside the vector query, hydrated
from the catalog in one batched query."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import numpy as np
from PIL.Image import Image

from backend.config import SearchSettings
from backend.domain.hydration import IndexedVersionClock, ProductCache, hydrate
from backend.domain.lexical import english_rendering
from backend.domain.mmr import mmr
from backend.domain.payload import normalise_filters
from backend.domain.photo_index import PhotoIndex
from backend.domain.photo_search import (
    best_per_product,
    decode_query_photo,
    describe_query,
    search_photo,
    upload_scale,
)
from backend.domain.ports import IndexedCatalog, VectorEncoder
from backend.domain.product_rules import check_price_range
from backend.domain.text_search import count_facets, explain_parts, hybrid_dense, search_text
from backend.domain.types import Filters, Product, SearchHit, SearchResult
from backend.domain.vectors import FACET_KEYS, FacetCounts, ScoredPoint, VectorStore
from backend.errors import InvalidInput, NotFound, NotReady, shown
from backend.security import Role
from backend.security import current as current_principal
from encoders.localise import query_views
from encoders.priority import run_heavy

# Points are per product image; fetch more than asked so that several images of one product
# still leave top_k distinct products after grouping.
_GROUP_OVERFETCH = 3
# Diversified results are picked from this many candidates per result of the window.
_MMR_POOL = 4
# Ranking this few points costs less on the event loop than a hop to a thread.
_INLINE_RANK = 300

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class SearchQuery:
    image: bytes = b""
    text: str = ""
    product_id: str = ""
    filters: Filters = field(default_factory=Filters)
    top_k: int = 0
    page_token: str = ""
    diversify: bool = False
    min_catalog_version: int = 0
    explain: bool = False  # each hit carries the parts of its score
    facets: list[str] = field(default_factory=list)  # FACET_KEYS and "price"


def encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def decode_page_token(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        if not text.startswith("o:"):
            raise ValueError(text)
        offset = int(text[2:])
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("page_token is not one this server issued") from exc
    if offset < 0 or offset > 10_000:
        raise InvalidInput("page_token is out of range")
    return offset


class SearchService:
    def __init__(
        self,
        catalog: IndexedCatalog,
        vectors: VectorStore,
        encoder: VectorEncoder,
        collection: str,
        settings: SearchSettings,
        photo: PhotoIndex | None = None,
    ) -> None:
        self._photo = photo
        self._catalog = catalog
        self._vectors = vectors
        self._encoder = encoder
        self._collection = collection
        self._settings = settings
        self.ready = False  # set once the models are warm
        self.products = ProductCache(settings.product_cache_size)
        self._indexed = IndexedVersionClock(catalog, settings.indexed_version_ttl_ms / 1000)
        self._pool = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="search-io")
        self._known_categories: set[str] = set()

    async def _io(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`asyncio.to_thread` on this service's own pool (the caller's context variables
        go along, as with to_thread)."""
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _prepare(self, category: str, min_catalog_version: int) -> tuple[bool, int, str]:
        """The per-request lookups in one thread hop: does the filter's category exist, the
        indexed version, the collection the alias points at."""
        exists = True
        if category and category not in self._known_categories:
            # Categories are never removed, so only a found one is remembered.
            exists = self._catalog.category_exists(category)
            if exists and len(self._known_categories) < 100_000:
                self._known_categories.add(category)
        reflected = self._indexed.get(at_least=min_catalog_version)
        return exists, reflected, self._vectors.resolve(self._collection)

    def _hydrate(self, product_ids: list[str]) -> dict[str, Product]:
        return hydrate(self._catalog, self.products, product_ids)

    @property
    def model_version(self) -> str:
        return self._encoder.model_version

    async def search(self, query: SearchQuery) -> SearchResult:
        top_k = self.validate(query)
        if not self.ready:
            raise NotReady("the service is warming up; retry shortly")
        offset = decode_page_token(query.page_token)
        self._check_window(offset, top_k, query.diversify)
        # The caller's scope (a storefront key: listed products + its merchants' own) becomes
        # part of the filter, so it is applied inside the vector query.
        principal = current_principal()
        filters = normalise_filters(principal.scope_filters(query.filters))
        if query.product_id and principal.role is Role.STOREFRONT:
            source = await asyncio.to_thread(self._catalog.get_products, [query.product_id])
            if query.product_id not in source or not principal.can_see(
                    source[query.product_id]):
                raise NotFound(f"product {shown(query.product_id)} is not indexed")
        category_exists, reflected, collection = await self._io(
            self._prepare, filters.category, query.min_catalog_version)
        if not category_exists:
            raise NotFound(f"unknown category {shown(query.filters.category)}")
        if query.min_catalog_version > reflected:
            raise NotReady(
                f"catalog version {query.min_catalog_version} is not indexed yet "
                f"(indexed: {reflected}); retry shortly"
            )

        if query.image and self._photo is not None and not query.diversify:
            hits, more = await self._search_photo(query, filters, collection, offset, top_k)
            facets = await self._facets(query, filters, collection,
                                        [h.product.product_id for h in hits])
            return SearchResult(
                hits=[h for h in hits if principal.can_see(h.product)],
                next_page_token=encode_page_token(offset + top_k) if more else "",
                model_version=self._encoder.model_version,
                catalog_version=reflected,
                facets=facets,
            )
        limit = (offset + top_k) * _GROUP_OVERFETCH
        if query.facets:
            # The facets' "top N hits" come from the same ranking as the page.
            limit = max(limit, self._settings.facet_top_n * _GROUP_OVERFETCH)
        if query.diversify:
            # Always the same candidate pool, whatever the page: MMR picks greedily, so every
            # page is then a slice of one ranking (no repeats or gaps between pages).
            limit = max(limit, _MMR_POOL * self._settings.max_diversify_window)
        points, vector_name, dense = await self._candidates(
            query, filters, collection, limit, (offset + top_k) * _GROUP_OVERFETCH)
        ranked = (_best_per_product(points) if len(points) <= _INLINE_RANK
                  else await self._io(_best_per_product, points))
        facets = await self._facets(query, filters, collection,
                                    [p.payload.product_id for p in ranked])
        available = len(ranked)  # MMR returns only offset + top_k: count before it
        if query.diversify and vector_name:
            ranked = await _diversify(ranked, vector_name, offset + top_k)
        page = ranked[offset : offset + top_k]
        products = await self._io(self._hydrate, [p.payload.product_id for p in page])
        parts: dict[str, dict[str, float]] = {}
        if query.explain and dense is not None:
            parts = await self._io(
                explain_parts, self._vectors, collection, query.text.strip(), dense, filters,
                page, max(self._settings.text_depth, (offset + top_k) * _GROUP_OVERFETCH))
            for i, p in enumerate(page):
                parts[p.id]["fused_rank"] = float(offset + i)
        hits = [
            SearchHit(
                product=products[p.payload.product_id],
                score=p.score,
                matched_image=p.payload.position if vector_name != "text" else -1,
                parts=parts.get(p.id, {}),
            )
            for p in page
            # can_see: a listing change still in the outbox must not leak either.
            if p.payload.product_id in products
            and principal.can_see(products[p.payload.product_id])
        ]
        more = available > offset + top_k
        return SearchResult(
            hits=hits,
            next_page_token=encode_page_token(offset + top_k) if more else "",
            model_version=self._encoder.model_version,
            catalog_version=reflected,
            facets=facets,
        )

    async def _facets(self, query: SearchQuery, filters: Filters, collection: str,
                      ranked_ids: list[str]) -> FacetCounts:
        if not query.facets:
            return {}
        return await self._io(
            count_facets, self._vectors, collection, query.text.strip(), filters,
            ranked_ids, list(query.facets), self._settings)

    def _check_window(self, offset: int, top_k: int, diversify: bool) -> None:
        """Bound the work one request can cause: results are ranked from the top each time,
        so paging deep costs as much as asking for offset + top_k results at once."""
        window = (self._settings.max_diversify_window if diversify
                  else self._settings.max_result_window)
        if offset + top_k > window:
            what = "diversified results" if diversify else "results"
            raise InvalidInput(
                f"page offset + top_k is {offset + top_k}; at most the first {window} "
                f"{what} can be paged through (narrow the query with filters instead)")

    def validate(self, query: SearchQuery) -> int:
        """Reject bad requests before any work is done; returns the effective top_k."""
        given = [bool(query.image), bool(query.text.strip()), bool(query.product_id)]
        if not any(given):
            raise InvalidInput("empty query: give an image, a text or a product_id")
        if query.product_id and (query.image or query.text.strip()):
            raise InvalidInput("product_id (more like this) cannot be combined with image/text")
        if len(query.text) > self._settings.max_text_chars:
            raise InvalidInput(
                f"text is {len(query.text)} characters; the limit is "
                f"{self._settings.max_text_chars}"
            )
        if len(query.image) > self._settings.max_image_bytes:
            raise InvalidInput(
                f"image is {len(query.image)} bytes; the limit is {self._settings.max_image_bytes}"
            )
        top_k = query.top_k or self._settings.default_top_k
        if not 1 <= top_k <= self._settings.max_top_k:
            raise InvalidInput(f"top_k must be between 1 and {self._settings.max_top_k}")
        validate_filters(query.filters)
        unknown = set(query.facets) - {*FACET_KEYS, "price"}
        if unknown:
            raise InvalidInput(f"unknown facets {sorted(unknown)}; ask for any of "
                               f"{[*FACET_KEYS, 'price']}")
        return top_k

    async def _candidates(
        self, query: SearchQuery, filters: Filters, collection: str, limit: int,
        page_limit: int | None = None,
    ) -> tuple[list[ScoredPoint], str, np.ndarray | None]:
        """Candidate points, the vector name they were ranked by ("" for fused photo+text)
        and the dense text vector of a text-only query (None otherwise)."""
        with_vectors = query.diversify
        dims = self._encoder.dims
        if query.product_id:
            name = "fused" if "fused" in dims else "image"
            vector = await self._product_vector(query.product_id, collection, name)
            if vector is None:
                name = "text"
                vector = await self._product_vector(query.product_id, collection, name)
            if vector is None:
                raise NotFound(f"product {shown(query.product_id)} is not indexed")
            filters.exclude_product_ids = [*filters.exclude_product_ids, query.product_id]
            points = await self._io(
                self._vectors.search, collection, name, vector, filters, limit, 0, with_vectors
            )
            return points, name, None

        views: list[Image] = []
        if query.image:
            image = await decode_query_photo(query.image, self._settings)
            views = await run_heavy(query_views, image)
        text = query.text.strip() or None
        hybrid = text is not None and not views and self._settings.text_lexical
        # A Chinese query the lexicon renders in English searches with both (hybrid_dense);
        # the rendering is encoded beside the query, in the same batch.
        rendering = english_rendering(text) if hybrid and text is not None else None
        # Every view goes through the batcher at once, so they share one forward pass.
        encoded = await asyncio.gather(
            *(self._encoder.encode(view, text) for view in views)
        ) if views else list(await asyncio.gather(
            self._encoder.encode(None, text),
            *([self._encoder.encode(None, rendering)] if rendering else [])))

        def vector_for(vectors: dict[str, np.ndarray]) -> str:
            """The named vector a query searches: the fused one for photos when a fusion
            model is configured; text alone always searches the text vector, which the
            fused one does not beat on text (README, "Model quality")."""
            if "image" not in vectors:
                return "text"
            if "fused" in vectors:
                return "fused"
            return "hybrid" if "text" in vectors else "image"

        if hybrid and text is not None:
            # Text alone: dense + lexical + exact SKU/title, fused in one store query.
            dense = hybrid_dense(encoded[0]["text"],
                                 encoded[1]["text"] if rendering else None)
            points = await self._io(
                search_text, self._vectors, collection, text, dense, filters, limit,
                self._settings, with_vectors or query.explain, page_limit)
            return points, "text", dense

        def run(vectors: dict[str, np.ndarray]) -> list[ScoredPoint]:
            name = vector_for(vectors)
            if name == "hybrid":
                # Photo + text without a fusion model: combine the rankings (RRF), one call.
                return self._vectors.search_hybrid(
                    collection, {"image": vectors["image"], "text": vectors["text"]},
                    filters, limit)
            return self._vectors.search(
                collection, name, vectors[name], filters, limit, 0, with_vectors)

        results = await asyncio.gather(*(self._io(run, v) for v in encoded))
        name = vector_for(encoded[0])
        return _best_per_point(results), "" if name == "hybrid" else name, None

    async def _search_photo(self, query: SearchQuery, filters: Filters, collection: str,
                            offset: int, top_k: int) -> tuple[list[SearchHit], bool]:
        """A photo (and maybe text): descriptor-vote candidates and dense views (+ text)
        fused in the store, the most voted verified, ranked by the calibrated scorer."""
        assert self._photo is not None
        photo = self._photo
        settings = self._settings
        image = await decode_query_photo(query.image, settings)
        views = await run_heavy(query_views, image)
        text = query.text.strip() or None
        # Features on a feature thread while the encoder batches the views (and the text).
        described = run_heavy(describe_query, photo, image, upload_scale(query.image, image))
        encodings = [self._encoder.encode(view, None) for view in views]
        if text is not None:
            encodings.append(self._encoder.encode(None, text))
        described_query, *encoded = await asyncio.gather(described, *encodings)
        text_vector = encoded.pop()["text"] if text is not None else None
        image_vector = "fused" if "fused" in self._encoder.dims else "image"
        view_vectors = [v[image_vector] for v in encoded]
        limit = (offset + top_k) * _GROUP_OVERFETCH
        candidates = await search_photo(
            photo, self._vectors, collection, described_query, view_vectors, text_vector,
            filters, limit, settings.verify_top, [v["image"] for v in encoded], image_vector)
        ranked = best_per_product(candidates)
        page = ranked[offset: offset + top_k]
        products = await self._io(self._hydrate, [c.product_id for c in page])
        hits = [
            SearchHit(
                product=products[c.product_id],
                score=c.probability,
                matched_image=c.point.payload.position,
                box=described_query.to_upload(c.box),
                parts=c.parts,
            )
            for c in page
            if c.product_id in products
        ]
        return hits, len(ranked) > offset + top_k

    async def _product_vector(
        self, product_id: str, collection: str, name: str
    ) -> np.ndarray | None:
        found = await self._io(self._vectors.get_vectors, collection, product_id, name)
        if not found:
            return None
        # Several images: their mean direction represents the product.
        mean = np.mean([v for _, v in found], axis=0)
        norm = float(np.linalg.norm(mean))
        return (mean / norm).astype(np.float32) if norm > 0 else None


def validate_filters(filters: Filters) -> None:
    check_price_range(filters.price)
    for values in filters.keyword_values().values():
        if any(not v.strip() or len(v) > 200 for v in values):
            raise InvalidInput("filter values must be non-empty and at most 200 characters")


def _best_per_point(results: list[list[ScoredPoint]]) -> list[ScoredPoint]:
    """Merge the results of several query views, keeping each point's best score."""
    if len(results) == 1:
        return results[0]
    best: dict[str, ScoredPoint] = {}
    for points in results:
        for point in points:
            if point.id not in best or point.score > best[point.id].score:
                best[point.id] = point
    return list(best.values())


def _best_per_product(points: list[ScoredPoint]) -> list[ScoredPoint]:
    """Keep the best-scoring image of each product, in score order."""
    seen: set[str] = set()
    out: list[ScoredPoint] = []
    # Ties broken by product id: equal scores (identical titles) must rank the same way on
    # every call, or pages (and diversified picks) would differ from call to call.
    for point in sorted(points, key=lambda p: (-p.score, p.payload.product_id)):
        if point.payload.product_id not in seen:
            seen.add(point.payload.product_id)
            out.append(point)
    return out


async def _diversify(points: list[ScoredPoint], name: str, k: int) -> list[ScoredPoint]:
    """MMR in a low-priority worker thread (never on the event loop), told to stop when the
    call is cancelled or its deadline passes (both cancel this coroutine)."""
    stop = threading.Event()
    try:
        return await run_heavy(mmr, points, name, k, stop=stop)
    except asyncio.CancelledError:
        stop.set()
        raise
