"""The vector store contract. Implementations: qdrant-edge (embedded) and qdrant-client (server).

One point per product image (a product without images gets one point at position -1).
Each point carries named dense vectors (`image`, `text`, `fused`), optionally named sparse
vectors (`words`: the visual words of the image's local features, weighted by IDF inside the
store) and a payload that mirrors the filterable catalog attributes, so that a filtered
search is one call.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from backend.domain.types import Filters
from backend.errors import InvalidInput

# Namespace for deterministic point ids: the same product image under the same model
# version always maps to the same id, so re-indexing is idempotent.
_POINT_NAMESPACE = uuid.UUID("6f1c2a5e-8d4b-4c1e-9a3f-2b7d5e0c9a11")


# Reciprocal rank fusion constant for `search_hybrid`, fixed so that every backend returns
# the same fused scores: score = sum over vectors of 1 / (RRF_K + rank), rank from 0.
RRF_K = 60


def point_id(product_id: str, position: int, model_version: str) -> str:
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{product_id}/{position}/{model_version}"))


def category_prefixes(path: str) -> list[str]:
    """'a/b/c' -> ['a', 'a/b', 'a/b/c'], so that a category filter matches a whole subtree."""
    parts = [p for p in path.strip("/").split("/") if p]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass
class PointPayload:
    """The payload mirror of one product image. Field names are the filter keys."""

    product_id: str
    position: int
    model_version: str
    catalog_version: int
    merchant: str
    category: list[str]  # category_prefixes(product.category)
    size: str
    material: str
    colour: str
    brand: str
    price: float
    in_stock: bool
    listed: bool

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PointPayload:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})  # type: ignore[arg-type]


@dataclass(frozen=True)
class SparseVector:
    """Non-zero entries of a sparse vector: distinct non-negative int indices, float values."""

    indices: np.ndarray
    values: np.ndarray


@dataclass
class VectorPoint:
    id: str
    vectors: dict[str, np.ndarray]  # name -> 1-D float32, L2-normalised
    payload: PointPayload
    sparse: dict[str, SparseVector] = field(default_factory=dict)


@dataclass(frozen=True)
class Prefetch:
    """One candidate list of a fused query: nearest points by a dense vector (cosine) or by a
    sparse one (dot product, IDF-weighted where the collection says so), `depth` deep."""

    name: str
    vector: np.ndarray | SparseVector
    depth: int = 100


@dataclass
class ScoredPoint:
    id: str
    score: float
    payload: PointPayload
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class CollectionSpec:
    name: str
    vectors: dict[str, int]  # vector name -> dimension; distance is always cosine
    # Sparse vector names; each is scored by dot product with the IDF modifier, so a rare
    # visual word counts for more than one that occurs in every image.
    sparse_vectors: list[str] = field(default_factory=list)
    hnsw_m: int = 16
    hnsw_ef_construct: int = 128
    quantize_int8: bool = False
    shards: int = 1
    replicas: int = 1


@dataclass
class PayloadPatch:
    """Payload-only change (stock, price, listing) for every point of one product."""

    product_id: str
    values: dict[str, object]


# Fields that identify a point; a payload patch must never change them.
IDENTITY_FIELDS = frozenset({"product_id", "position", "model_version"})


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


@dataclass(frozen=True)
class IndexState:
    """Points in a collection and vectors in its HNSW index (one per point and named dense
    vector when fully built; segments below the full-scan threshold are never indexed)."""

    points: int
    indexed_vectors: int


@runtime_checkable
class VectorStore(Protocol):
    """Every method is synchronous and thread-safe; services call them from worker threads.

    Every `collection` argument may also be an alias. A collection that does not exist raises
    NotReady (nothing has been indexed there yet); a vector of the wrong shape, a non-finite
    value or an unknown vector name raises InvalidInput.
    """

    def ensure_collection(self, spec: CollectionSpec) -> None:
        """Create the collection with payload indexes on every filterable field if missing.
        Raises ConfigError if it exists with different vectors."""

    def upsert(self, collection: str, points: list[VectorPoint]) -> None:
        """Insert or replace points by id; visible to search when the call returns."""

    def delete_products(self, collection: str, product_ids: list[str]) -> None:
        """Remove every point of these products; invisible to search when the call returns."""

    def set_payload(self, collection: str, patches: list[PayloadPatch]) -> None:
        """Update payload fields of every point of each product, without touching vectors.
        Identity fields (product_id, position, model_version) cannot be patched; a `category`
        given as a path string is stored as its prefixes."""

    def search(
        self,
        collection: str,
        vector_name: str,
        vector: np.ndarray,
        filters: Filters,
        limit: int,
        offset: int = 0,
        with_vectors: bool = False,
    ) -> list[ScoredPoint]:
        """Nearest points by cosine similarity, the filter applied inside the index query."""

    def search_hybrid(
        self,
        collection: str,
        queries: dict[str, np.ndarray],
        filters: Filters,
        limit: int,
        offset: int = 0,
    ) -> list[ScoredPoint]:
        """One query per named vector, combined by reciprocal rank fusion (RRF_K), in one call.
        The filter applies to every per-vector query; scores are fused ranks, not cosines."""

    def search_fused(
        self,
        collection: str,
        prefetches: list[Prefetch],
        filters: Filters,
        limit: int,
        with_vectors: list[str] | None = None,
    ) -> list[ScoredPoint]:
        """Several candidate lists (dense or sparse, several per vector name allowed, e.g. one
        per view of a photo) fused by reciprocal rank fusion (RRF_K) inside the store in one
        call. The filter applies inside every prefetch; scores are fused ranks.
        `with_vectors` names dense vectors to return with each point."""

    def get_vectors(
        self, collection: str, product_id: str, vector_name: str
    ) -> list[tuple[int, np.ndarray]]:
        """(position, vector) for every point of a product that has this named vector."""

    def count(self, collection: str, filters: Filters | None = None) -> int: ...

    def scroll_payloads(self, collection: str) -> list[tuple[str, PointPayload]]:
        """Every (point id, payload) in the collection, for reconciliation."""

    def product_payloads(self, collection: str, product_ids: list[str]
                         ) -> list[tuple[str, PointPayload]]:
        """(point id, payload) of every point of these products (to verify a write)."""

    def scroll_page(self, collection: str, offset: str | None, limit: int
                    ) -> tuple[list[tuple[str, PointPayload]], str | None]:
        """Up to `limit` (point id, payload) pairs in point-id order, starting at `offset`
        (None: the first point), and the offset of the next page (None after the last):
        a bounded walk over the whole collection."""

    def flush(self, collection: str) -> None:
        """Make the writes so far durable on disk (the embedded store's segments; a server
        persists through its own write-ahead log before acknowledging)."""

    def delete_points(self, collection: str, point_ids: list[str]) -> None: ...

    def build_index(self, collection: str) -> None:
        """Finish index building after a bulk load (optimise segments)."""

    def index_state(self, collection: str) -> IndexState:
        """How many points the collection holds and how many of its vectors are indexed."""

    def set_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection` atomically (server alias or embedded pointer).
        Searches running during the switch see either the old or the new collection."""

    def resolve(self, alias_or_name: str) -> str:
        """The collection an alias points to (or the name itself)."""

    def list_collections(self) -> list[str]: ...

    def drop_collection(self, collection: str) -> None:
        """Delete a collection (by its real name) and the aliases pointing at it; no-op if
        missing."""

    def close(self) -> None: ...
