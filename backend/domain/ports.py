"""What the domain needs from the outside, as Protocols, and the records that cross them.

- The catalog: `ProductReader` / `ProductCatalog` (products), `Outbox` (changes the vector
  index has still to apply), `ApiKeyStore`, `DedupReviewStore`. The SQL `CatalogRepository`
  (in the catalog store) implements all of them; a domain service types against the
  narrowest port it uses, so a test can hand it a small fake.
- The vector store: `backend.domain.vectors.VectorStore`; local feature files: `FeatureFiles`.
- The encoders: `VectorEncoder`, satisfied by `encoders.worker.EncoderWorker` (in-process)
  and the remote encoder client.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL.Image import Image

from backend.domain.types import Product, ProductInput

# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpsertOutcome:
    product_id: str
    changed: bool
    # The product's last-change version: the batch's new version when changed, else unchanged.
    catalog_version: int


@dataclass(frozen=True)
class InventoryChange:
    """A stock and/or price change. `None` fields are left as they are. The inventory row
    (product, warehouse, bin) is created when missing and quantity or reorder_point is given."""

    product_id: str
    warehouse: str = ""
    bin: str = ""
    quantity: int | None = None
    reorder_point: int | None = None
    price: float | None = None
    currency: str | None = None


@dataclass(frozen=True)
class OutboxItem:
    id: int
    product_id: str
    op: str  # 'upsert' | 'delete' | 'payload'
    catalog_version: int
    attempts: int = 0  # claims so far, this one included


@dataclass(frozen=True)
class ApiKeyRow:
    id: int
    key_hash: str
    role: str
    merchant: str | None
    warehouse: str | None
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class DedupPair:
    product_a: str
    product_b: str
    status: str  # "group" or "review"
    group_id: str | None
    probability: float
    image_similarity: float
    text_similarity: float
    evidence: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# The catalog
# ---------------------------------------------------------------------------------------------


class ProductReader(Protocol):
    """Reads of live (not deleted) products. Every call is synchronous and thread-safe."""

    def catalog_version(self) -> int:
        """The version of the newest committed change."""
        ...

    def get_products(self, product_ids: list[str]) -> dict[str, Product]:
        """Products by id; unknown and deleted ids are left out."""
        ...

    def product_versions(self, product_ids: Sequence[str]) -> dict[str, int]:
        """Live products' current catalog versions, by id (cheaper than get_products)."""
        ...

    def get_product(self, product_id: str) -> Product:
        """The product, or NotFound."""
        ...

    def find_by_sku(self, merchant: str, sku: str) -> Product | None: ...

    def iter_products(self, batch: int = 500, after: str = "") -> Iterator[list[Product]]:
        """Every live product in id order (ids above `after`), `batch` at a time."""
        ...

    def category_exists(self, prefix: str) -> bool:
        """True if a category is `prefix` or lies under it (case-insensitively)."""
        ...

    def image_uris_in_use(self, uris: Sequence[str]) -> set[str]:
        """Which of these image URIs a stored product (deleted ones included) refers to."""
        ...


class ProductCatalog(ProductReader, Protocol):
    """Reads and writes. Every write is one transaction that bumps the catalog version once and
    queues one outbox entry per changed product."""

    def upsert_products(self, items: list[ProductInput]) -> list[UpsertOutcome]:
        """Insert or update (idempotent: unchanged content gets no new version)."""
        ...

    def delete_products(self, product_ids: list[str]) -> tuple[int, int]:
        """Tombstone; returns (number deleted, catalog version after the call)."""
        ...

    def update_inventory(self, updates: list[InventoryChange]) -> tuple[int, int]:
        """Stock and price changes; returns (products changed, catalog version after)."""
        ...


class Outbox(Protocol):
    """Catalog changes the vector index has not applied yet (at-least-once, one drainer)."""

    def claim_outbox(self, limit: int) -> list[OutboxItem]:
        """The oldest pending entries, counting one more attempt on each."""
        ...

    def mark_done(self, outbox_ids: list[int]) -> int:
        """Mark entries done; returns how many were pending."""
        ...

    def pending_count(self) -> int: ...

    def pending_product_ids(self, among: Sequence[str] | None = None) -> list[str]: ...

    def newest_pending_versions(self, product_ids: Sequence[str]) -> dict[str, int]: ...

    def indexed_version(self) -> int:
        """The catalog version search reflects: every change up to it is indexed."""
        ...

    def oldest_pending_age_s(self) -> float | None: ...

    def changed_since(self, version: int) -> list[str]:
        """Products with an outbox entry (done or not) newer than catalog version `version`."""
        ...


class IndexedCatalog(ProductReader, Outbox, Protocol):
    """Products and how far the index has caught up with them (search, indexing, repair)."""


class ApiKeyStore(Protocol):
    def create_api_key(self, key_hash: str, role: str, merchant: str | None = None,
                       warehouse: str | None = None) -> int: ...

    def find_api_key(self, key_hash: str) -> ApiKeyRow | None:
        """The key with this hash, unless revoked."""
        ...

    def list_api_keys(self, include_revoked: bool = False) -> list[ApiKeyRow]: ...

    def revoke_api_key(self, key_id: int) -> bool: ...


class DedupReviewStore(Protocol):
    def save_dedup_run(self, run_id: str, pairs: Sequence[DedupPair]) -> None:
        """One dedup run's pairs, all or nothing."""
        ...

    def dedup_run(self, run_id: str) -> list[DedupPair]: ...


class DedupCatalog(ProductReader, DedupReviewStore, Protocol):
    """What a dedup run reads and writes."""


# ---------------------------------------------------------------------------------------------
# Local feature files
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredFeatures:
    point_id: str
    product_id: str
    position: int
    version: str  # the features version that wrote it; another version is stale
    data: bytes = b""  # empty when only the header was read


class FeatureFiles(Protocol):
    """Per-image local features by collection and point id (sidecar files: the `FeatureStore`)."""

    def put_many(self, collection: str, items: list[StoredFeatures]) -> int:
        """Write every item durably; returns the bytes written."""
        ...

    @property
    def root(self) -> Path:
        """The folder the files live under (a derived index keeps its snapshot beside them)."""
        ...

    def get(self, collection: str, product_id: str, point_id: str) -> StoredFeatures | None: ...

    def stamp(self, collection: str, product_id: str, point_id: str) -> str | None:
        """Identifies this version of a file (changes on every rewrite); None when missing."""
        ...

    def stamps(self, collection: str) -> dict[str, tuple[Path, str]]:
        """point id -> (path, stamp) of every stored file, without reading them."""
        ...

    def read(self, path: Path) -> StoredFeatures | None:
        """A file found by `stamps`; None when it is gone or not one of ours."""
        ...

    def delete_products(self, collection: str, product_ids: list[str]) -> None: ...

    def prune(self, collection: str, product_id: str, keep: set[str]) -> int:
        """Remove a product's files whose point id is not in `keep`; returns how many."""
        ...

    def scan(self, collection: str) -> Iterator[StoredFeatures]:
        """Every stored file's header (no data); unreadable ones with version ''."""
        ...

    def delete_paths(self, collection: str, stored: list[StoredFeatures]) -> None: ...

    def drop(self, collection: str) -> None: ...


# ---------------------------------------------------------------------------------------------
# The encoders
# ---------------------------------------------------------------------------------------------


class VectorEncoder(Protocol):
    @property
    def model_version(self) -> str: ...

    @property
    def dims(self) -> dict[str, int]: ...

    def start(self) -> None:
        """Load the models, warm them up and start the batcher (idempotent, blocking)."""
        ...

    async def stop(self) -> None: ...

    async def encode(self, image: Image | None, text: str | None) -> dict[str, np.ndarray]:
        """Vectors for one query, through the dynamic batcher (bounded queue)."""
        ...

    def encode_many(
        self, images: Sequence[Image | None], texts: Sequence[str | None]
    ) -> list[dict[str, np.ndarray]]:
        """Vectors for many catalog items at once (bulk indexing, no queue)."""
        ...
