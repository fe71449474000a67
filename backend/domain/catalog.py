"""Catalog writes. SQL + outbox first (one transaction); vectors follow through the indexer.
Deletes also leave the vector store before returning, so a deleted product is never found."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from backend.domain.types import ProductInput
from backend.errors import InvalidInput, PermissionDenied, shown
from backend.security import Role
from backend.security import current as current_principal
from backend.stores.catalog.repository import CatalogRepository, InventoryChange, UpsertOutcome
from backend.stores.vectors.base import VectorStore
from encoders.preprocess import decode_image


class ImageBlobStore:
    """Uploaded image bytes, content-addressed so that re-uploads are idempotent."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def save(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self._root / digest[:2] / f"{digest}.img"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)  # atomic: a crash never leaves a half-written image
        return str(path.resolve())


class CatalogService:
    def __init__(
        self,
        catalog: CatalogRepository,
        vectors: VectorStore,
        collection: str,
        blobs: ImageBlobStore,
        max_image_bytes: int,
        max_image_pixels: int,
        on_write: threading.Event | None = None,
    ) -> None:
        self._catalog = catalog
        self._vectors = vectors
        self._collection = collection
        self._blobs = blobs
        self._max_image_bytes = max_image_bytes
        self._max_image_pixels = max_image_pixels
        self._on_write = on_write

    def upsert(self, items: list[ProductInput]) -> list[UpsertOutcome]:
        if not items:
            raise InvalidInput("no products in the request")
        for index, item in enumerate(items):
            self._validate_images(index, item)
        for item in items:
            # Store uploads only once every image of the batch has decoded: nothing partial.
            item.images = [*item.images, *(self._blobs.save(b) for b in item.image_bytes)]
            item.image_bytes = []
        outcomes = self._catalog.upsert_products(items)
        self._wake_indexer()
        return outcomes

    def delete(self, product_ids: list[str]) -> tuple[int, int]:
        if not product_ids:
            raise InvalidInput("no product ids in the request")
        deleted, version = self._catalog.delete_products(product_ids)
        self._vectors.delete_products(self._vectors.resolve(self._collection), product_ids)
        self._wake_indexer()
        return deleted, version

    def update_inventory(self, changes: list[InventoryChange]) -> tuple[int, int]:
        if not changes:
            raise InvalidInput("no inventory updates in the request")
        principal = current_principal()
        if principal.role is not Role.ADMIN:
            for change in changes:
                if change.price is not None or change.currency is not None:
                    raise PermissionDenied("a warehouse key may change stock, not prices")
                principal.require_warehouse(change.warehouse)
        result = self._catalog.update_inventory(changes)
        self._wake_indexer()
        return result

    def _validate_images(self, index: int, item: ProductInput) -> None:
        for n, data in enumerate(item.image_bytes):
            try:
                decode_image(data, max_bytes=self._max_image_bytes,
                             max_pixels=self._max_image_pixels)
            except ValueError as exc:
                raise InvalidInput(f"product {index} ({shown(item.sku)}) image {n}: {exc}") from exc
        for uri in item.images:
            path = Path(uri.removeprefix("file://"))
            if not path.is_file():
                raise InvalidInput(
                    f"product {index} ({shown(item.sku)}): image {shown(uri)} not found")

    def _wake_indexer(self) -> None:
        if self._on_write is not None:
            self._on_write.set()
