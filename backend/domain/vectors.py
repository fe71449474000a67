"""The vector store contract the domain searches and indexes through, and its value types.
Implementations (qdrant-edge embedded, qdrant-client server) live with the stores.

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
    # Text search: exact-match keys (normalised SKU and title), the product's distinct
    # lexical terms (facets count the products matching a query's terms), and whether this
    # is the product's first point (facets count products, not images). Points written
    # before these existed read as the defaults until they are indexed again.
    sku_key: str = ""
    title_key: str = ""
    terms: list[str] = field(default_factory=list)
    primary: bool = True

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PointPayload:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__  # type: ignore[arg-type]
                      if k in data})


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
    # Only points matching these keys as well as the query's filter: payload field ->
    # accepted values, any field (e.g. an exact SKU or an exact title).
    any_of: dict[str, tuple[str, ...]] | None = None


# "none": a single list, returned with its own scores (cosine, or the sparse dot product).
FUSIONS = ("rrf", "dbsf", "none")


# Added to the fused score of a boosted point (`search_fused(boost=...)`): more than any
# fused score reaches (RRF: at most one 1/RRF_K per list; DBSF: at most 1 per list).
BOOST = 1000.0


def check_fusion(fusion: str, prefetches: list[Prefetch],
                 boost: dict[str, tuple[str, ...]] | None = None) -> None:
    if fusion not in FUSIONS:
        raise InvalidInput(f"unknown fusion {fusion!r}; use one of {FUSIONS}")
    if fusion == "none" and len(prefetches) != 1:
        raise InvalidInput("fusion 'none' takes exactly one prefetch")
    if boost is not None and (fusion == "none" or not any(boost.values())):
        raise InvalidInput("a boost needs a fusion and at least one value")


# Payload fields facets can count (besides price, counted in bands).
FACET_KEYS = ("category", "size", "material", "colour", "brand", "merchant")


@dataclass
class FacetQuery:
    """Counts per value of `keys` over one point per product (`primary`) that passes
    `filters` and either has all of `all_terms` in its `terms` payload or is one of
    `product_ids`; price counted per band [low, high) (None: open)."""

    filters: Filters
    all_terms: list[str]
    product_ids: list[str]
    keys: list[str]
    limit: int = 20
    price_bands: list[tuple[float | None, float | None]] = field(default_factory=list)


# key -> [(value, count)], most frequent first; "price" -> [(band label, count)] in band order.
FacetCounts = dict[str, list[tuple[str, int]]]


def check_facet_query(query: FacetQuery) -> None:
    unknown = set(query.keys) - set(FACET_KEYS)
    if unknown:
        raise InvalidInput(f"cannot count facets of {sorted(unknown)}; use {FACET_KEYS}")
    if not 1 <= query.limit <= 1000:
        raise InvalidInput(f"facet limit must be between 1 and 1000, got {query.limit}")


def price_band_label(low: float | None, high: float | None) -> str:
    def fmt(v: float) -> str:
        return f"{v:g}"
    if low is None and high is None:
        return "*"
    if high is None:
        return f"{fmt(low or 0)}+"
    return f"{fmt(low or 0)}-{fmt(high)}"


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


# Fields that identify a point (or follow from its position); a payload patch must never
# change them.
IDENTITY_FIELDS = frozenset({"product_id", "position", "model_version", "primary"})


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
        fusion: str = "rrf",
        boost: dict[str, tuple[str, ...]] | None = None,
    ) -> list[ScoredPoint]:
        """Several candidate lists (dense or sparse, several per vector name allowed, e.g. one
        per view of a photo) fused inside the store in one call: by reciprocal rank fusion
        (`rrf`: RRF_K, each list's reciprocal ranks times its weight) or by distribution-based
        score fusion (`dbsf`: scores normalised per list, then summed), or one list with its
        own scores (`none`: cosine, or the IDF-weighted dot product). The filter applies
        inside every prefetch, and a prefetch's `any_of` on top of it; scores are fused.
        `boost` (payload field -> values, any field): candidates matching it get BOOST added
        to their fused score, so they rank first (an exact SKU or title).
        `with_vectors` names dense vectors to return with each point."""

    def facets(self, collection: str, query: FacetQuery) -> FacetCounts:
        """Counts per value of each facet key (exact), and per price band."""

    def get_vectors(
        self, collection: str, product_id: str, vector_name: str
    ) -> list[tuple[int, np.ndarray]]:
        """(position, vector) for every point of a product that has this named vector."""

    def count(self, collection: str, filters: Filters | None = None) -> int: ...

    def scroll_payloads(self, collection: str) -> list[tuple[str, PointPayload]]:
        """Every (point id, payload) in the collection, for reconciliation."""

    def product_payloads(self, collection: str, product_ids: list[str],
                         filters: Filters | None = None) -> list[tuple[str, PointPayload]]:
        """(point id, payload) of every point of these products (to verify a write), only
        those passing `filters` when given (candidates found outside the store, e.g. photo
        search's descriptor vote, filtered as a query would filter them)."""

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
