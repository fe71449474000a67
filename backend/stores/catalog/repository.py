"""The catalog repository: the only code that reads and writes the SQL catalog, as one object
that implements every catalog port of `backend.domain.ports`. Each part lives in its own
module over the same engine:

- `products.py`: product writes and reads (`ProductCatalog`)
- `outbox.py`: the changes the vector index has still to apply (`Outbox`)
- `api_keys.py`: API keys (`ApiKeyStore`)
- `dedup_reviews.py`: dedup review runs (`DedupReviewStore`)
- `sql_base.py`: sessions, the catalog version and its writer lock, shared by all of them
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.domain.ports import (
    ApiKeyRow,
    DedupPair,
    InventoryChange,
    OutboxItem,
    UpsertOutcome,
)
from backend.domain.product_rules import normalise_category, validate_products
from backend.stores.catalog.api_keys import SqlApiKeys
from backend.stores.catalog.dedup_reviews import SqlDedupReviews
from backend.stores.catalog.outbox import SqlOutbox
from backend.stores.catalog.products import SqlProducts

if TYPE_CHECKING:
    from backend.domain.ports import ApiKeyStore, DedupCatalog, IndexedCatalog, ProductCatalog


class CatalogRepository(SqlProducts, SqlOutbox, SqlApiKeys, SqlDedupReviews):
    """Products, outbox, API keys and dedup reviews over one engine (one set of sessions)."""


if TYPE_CHECKING:
    def _implements_the_ports(
        repo: CatalogRepository,
    ) -> tuple[ProductCatalog, IndexedCatalog, ApiKeyStore, DedupCatalog]:
        return repo, repo, repo, repo  # mypy checks each port against the repository


# Re-exported: callers that predate the domain ports import these from here.
__all__ = [
    "ApiKeyRow",
    "CatalogRepository",
    "DedupPair",
    "InventoryChange",
    "OutboxItem",
    "UpsertOutcome",
    "normalise_category",
    "validate_products",
]
