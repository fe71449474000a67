"""Text queries: the dense text vector, the lexical terms (BM25) and an exact SKU / title
lookup, fused in one vector-store query; their score parts (explain) and facet counts."""

from __future__ import annotations

import numpy as np

from backend.config import SearchSettings
from backend.domain.lexical import LEXICAL, match_terms, query_vector, title_key
from backend.domain.payload import norm
from backend.domain.text_terms import sku_key
from backend.domain.types import Filters
from backend.domain.vectors import (
    FacetCounts,
    FacetQuery,
    Prefetch,
    ScoredPoint,
    VectorStore,
)

TEXT = "text"
# Products matching the query exactly (SKU, title or brand) are candidates through a list of their
# own, this deep, and rank first through the store's boost.
EXACT_DEPTH = 30


def hybrid_dense(query: np.ndarray, rendering: np.ndarray | None) -> np.ndarray:
    """The dense vector a text query searches with: its own, or, for a Chinese query the
    lexicon renders in English (`lexical.english_rendering`), the normalised sum of both,
    so that "红色的鸟" searches near "red bird" where the encoder puts the two apart."""
    if rendering is None:
        return query
    total = query / (float(np.linalg.norm(query)) or 1.0) + \
        rendering / (float(np.linalg.norm(rendering)) or 1.0)
    return (total / (float(np.linalg.norm(total)) or 1.0)).astype(np.float32)


def exact_keys(text: str) -> dict[str, tuple[str, ...]]:
    """Payload keys an exact query matches: the SKU as typed, the title as typed, a brand
    name (a query that is exactly a brand ranks that brand's products first, as the brand
    filter would)."""
    keys: dict[str, tuple[str, ...]] = {}
    if sku := sku_key(text):
        keys["sku_key"] = (sku,)
    if title := title_key(text):
        keys["title_key"] = (title,)
    if brand := norm(text):
        keys["brand"] = (brand,)
    return keys


def text_prefetches(text: str, dense: np.ndarray, depth: int, *, lexical: bool = True,
                    semantic: bool = True, exact: bool = True) -> list[Prefetch]:
    """The candidate lists of a text query (all by default; the evaluation turns lists off
    to measure each on its own)."""
    out: list[Prefetch] = []
    if semantic:
        out.append(Prefetch(TEXT, dense, depth))
    sparse = query_vector(text) if lexical else None
    if sparse is not None:
        out.append(Prefetch(LEXICAL, sparse, depth))
    keys = exact_keys(text) if exact else {}
    if keys and out:
        # Ranked among themselves by the dense vector (several products can share a title).
        out.append(Prefetch(TEXT, dense, min(depth, EXACT_DEPTH), any_of=keys))
    if not out:
        out.append(Prefetch(TEXT, dense, depth))
    return out


def search_text(vectors: VectorStore, collection: str, text: str, dense: np.ndarray,
                filters: Filters, limit: int, settings: SearchSettings,
                with_vectors: bool = False, page_limit: int | None = None
                ) -> list[ScoredPoint]:
    """One fused query; the text vector is returned when explaining or diversifying needs
    it. Each list is as deep as the page needs (`page_limit`, default `limit`), so asking
    for more candidates (the facets' top hits) does not reorder the page."""
    depth = max(settings.text_depth, page_limit or limit)
    return vectors.search_fused(
        collection, text_prefetches(text, dense, depth), filters, limit,
        with_vectors=[TEXT] if with_vectors else None, fusion=settings.text_fusion,
        boost=exact_keys(text) or None)


def explain_parts(vectors: VectorStore, collection: str, text: str, dense: np.ndarray,
                  filters: Filters, page: list[ScoredPoint], depth: int
                  ) -> dict[str, dict[str, float]]:
    """Point id -> the parts of its score: dense cosine (from the returned vector),
    the lexical BM25 score and rank (when within the lexical list), whether it matched
    exactly, its rank in the fused list. One more lexical-only and exact-only query each."""
    sparse = query_vector(text)
    lexical: dict[str, tuple[int, float]] = {}
    if sparse is not None:
        listed = vectors.search_fused(collection, [Prefetch(LEXICAL, sparse, depth)],
                                      filters, depth, fusion="none")
        lexical = {p.id: (rank, p.score) for rank, p in enumerate(listed)}
    keys = exact_keys(text)
    exact: set[str] = set()
    if keys:
        exact = {p.id for p in vectors.search_fused(
            collection, [Prefetch(TEXT, dense, EXACT_DEPTH, any_of=keys)], filters,
            EXACT_DEPTH, fusion="none")}
    unit = dense / (float(np.linalg.norm(dense)) or 1.0)
    out: dict[str, dict[str, float]] = {}
    for rank, p in enumerate(page):
        parts: dict[str, float] = {"fused_rank": float(rank), "fused_score": p.score}
        vec = p.vectors.get(TEXT)
        if vec is not None:
            parts["dense_text"] = round(float(unit @ (vec / (np.linalg.norm(vec) or 1.0))), 6)
        if p.id in lexical:
            parts["lexical_rank"] = float(lexical[p.id][0])
            parts["lexical"] = round(lexical[p.id][1], 6)
        parts["exact"] = 1.0 if p.id in exact else 0.0
        out[p.id] = parts
    return out


def price_bands(edges: list[float]) -> list[tuple[float | None, float | None]]:
    """[0, 10, 25] -> [(0, 10), (10, 25), (25, None)]."""
    ordered = sorted(set(edges))
    return [(low, ordered[i + 1] if i + 1 < len(ordered) else None)
            for i, low in enumerate(ordered)]


def count_facets(vectors: VectorStore, collection: str, text: str, filters: Filters,
                 top_ids: list[str], keys: list[str], settings: SearchSettings
                 ) -> FacetCounts:
    """Facet counts over the products passing `filters` that match every term of `text`
    lexically or are among `top_ids` (the first facet_top_n hits)."""
    wanted = [k for k in keys if k != "price"]
    query = FacetQuery(
        filters=filters,
        all_terms=match_terms(text) if text.strip() else [],
        product_ids=top_ids[: settings.facet_top_n],
        keys=wanted,
        price_bands=price_bands(settings.facet_price_bands) if "price" in keys else [],
    )
    return vectors.facets(collection, query)
