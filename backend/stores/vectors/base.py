"""The vector store contract, re-exported for the stores from `backend.domain.vectors` (the
domain owns it), and the argument checks both implementations share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from backend.domain.types import Filters
from backend.domain.vectors import (
    BOOST,
    FACET_KEYS,
    FUSIONS,
    IDENTITY_FIELDS,
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
    VectorStore,
    category_prefixes,
    check_facet_query,
    check_fusion,
    point_id,
    price_band_label,
)
from backend.errors import InvalidInput

__all__ = [
    "BOOST",
    "FACET_KEYS",
    "FUSIONS",
    "IDENTITY_FIELDS",
    "RRF_K",
    "CollectionSpec",
    "FacetCounts",
    "FacetQuery",
    "FusedSearch",
    "IndexState",
    "PayloadPatch",
    "PointPayload",
    "Prefetch",
    "ScoredPoint",
    "SparseVector",
    "VectorPoint",
    "VectorStore",
    "category_prefixes",
    "check_facet_query",
    "check_fusion",
    "check_page",
    "check_prefetches",
    "hybrid_prefetches",
    "patch_values",
    "point_id",
    "price_band_label",
    "scored_points",
    "sparse_values",
    "vector_values",
]


def vector_values(vector: np.ndarray, name: str, dim: int | None = None) -> list[float]:
    """A 1-D finite vector as the list of floats the Qdrant libraries take; InvalidInput if not."""
    arr = np.asarray(vector, dtype=np.float32)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidInput(f"vector {name!r} must be 1-D and non-empty, got shape {arr.shape}")
    if dim is not None and arr.shape[0] != dim:
        raise InvalidInput(f"vector {name!r} has dimension {arr.shape[0]}, the collection {dim}")
    if not np.isfinite(arr).all():
        raise InvalidInput(f"vector {name!r} contains NaN or infinite values")
    values: list[float] = arr.tolist()
    return values


def sparse_values(vector: SparseVector, name: str) -> tuple[list[int], list[float]]:
    """A sparse vector as (indices, values) lists; InvalidInput if it is malformed."""
    idx = np.asarray(vector.indices)
    val = np.asarray(vector.values, dtype=np.float32)
    if idx.ndim != 1 or val.ndim != 1 or idx.shape != val.shape:
        raise InvalidInput(f"sparse vector {name!r} needs 1-D indices and values of one length")
    if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0
                     or idx.max() >= 2**32):
        raise InvalidInput(f"sparse vector {name!r} indices must be integers in [0, 2^32)")
    if np.unique(idx).size != idx.size:
        raise InvalidInput(f"sparse vector {name!r} has repeated indices")
    if not np.isfinite(val).all():
        raise InvalidInput(f"sparse vector {name!r} contains NaN or infinite values")
    return [int(i) for i in idx], val.tolist()


def check_prefetches(prefetches: list[Prefetch], dense: dict[str, int], sparse: list[str]
                     ) -> None:
    """InvalidInput unless every prefetch names a vector of the right kind in the collection."""
    if not prefetches:
        raise InvalidInput("a fused search needs at least one prefetch")
    for pf in prefetches:
        if pf.depth < 1:
            raise InvalidInput(f"prefetch depth must be at least 1, got {pf.depth}")
        if isinstance(pf.vector, SparseVector):
            if pf.name not in sparse:
                raise InvalidInput(f"unknown sparse vector {pf.name!r}; the collection has "
                                   f"{sorted(sparse)}")
        elif pf.name not in dense:
            raise InvalidInput(f"unknown vector {pf.name!r}; the collection has {sorted(dense)}")


def patch_values(patch: PayloadPatch) -> dict[str, object]:
    """The payload fields a patch sets, checked against PointPayload."""
    known = set(PointPayload.__dataclass_fields__)
    unknown = set(patch.values) - known
    if unknown:
        raise InvalidInput(f"unknown payload fields in patch: {sorted(unknown)}")
    frozen = set(patch.values) & IDENTITY_FIELDS
    if frozen:
        raise InvalidInput(f"payload fields {sorted(frozen)} identify a point; re-index instead")
    values = dict(patch.values)
    if isinstance(values.get("category"), str):
        values["category"] = category_prefixes(str(values["category"]))
    return values


def check_page(limit: int, offset: int) -> None:
    if limit < 1:
        raise InvalidInput(f"limit must be at least 1, got {limit}")
    if offset < 0:
        raise InvalidInput(f"offset must not be negative, got {offset}")


def hybrid_prefetches(queries: dict[str, np.ndarray], limit: int, offset: int
                      ) -> list[Prefetch]:
    """`search_hybrid` as a fused search: one dense prefetch per named vector. Each list must
    reach deeper than the page, or fusion could not promote a point that ranks well in one
    list and only moderately in another."""
    if not queries:
        raise InvalidInput("hybrid search needs at least one query vector")
    depth = max(100, 2 * (limit + offset))
    return [Prefetch(name, vector, depth) for name, vector in queries.items()]


def scored_points(points: Iterable[Any], with_vectors: bool) -> list[ScoredPoint]:
    """Scored points of either Qdrant library (`.id`, `.score`, `.payload`, `.vector`)."""
    out = []
    for p in points:
        vectors: dict[str, np.ndarray] = {}
        if with_vectors and isinstance(p.vector, dict):
            # Dense vectors only: a sparse one (visual words) is not an array.
            vectors = {k: np.asarray(v, dtype=np.float32) for k, v in p.vector.items()
                       if isinstance(v, list)}
        out.append(ScoredPoint(id=str(p.id), score=float(p.score),
                               payload=PointPayload.from_dict(dict(p.payload or {})),
                               vectors=vectors))
    return out


class FusedSearch:
    """`search_hybrid` and `search_fused` of both stores: argument checks, then the store's
    own `_fused` (one fused query with an offset)."""

    def _fused(self, collection: str, prefetches: list[Prefetch], filters: Filters,
               limit: int, offset: int, with_vectors: list[str] | None, fusion: str = "rrf",
               boost: dict[str, tuple[str, ...]] | None = None) -> list[ScoredPoint]:
        raise NotImplementedError

    def search_hybrid(self, collection: str, queries: dict[str, np.ndarray], filters: Filters,
                      limit: int, offset: int = 0) -> list[ScoredPoint]:
        check_page(limit, offset)
        return self._fused(collection, hybrid_prefetches(queries, limit, offset), filters,
                           limit, offset, None)

    def search_fused(self, collection: str, prefetches: list[Prefetch], filters: Filters,
                     limit: int, with_vectors: list[str] | None = None, fusion: str = "rrf",
                     boost: dict[str, tuple[str, ...]] | None = None) -> list[ScoredPoint]:
        check_page(limit, 0)
        return self._fused(collection, prefetches, filters, limit, 0, with_vectors, fusion,
                           boost)
