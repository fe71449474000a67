"""Catalog writes. SQL + outbox first (one transaction); vectors follow through the indexer.
Deletes also leave the vector store before returning, so a deleted product is never found."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from backend.domain.ports import InventoryChange, ProductCatalog, UpsertOutcome
from backend.domain.product_rules import validate_products
from backend.domain.types import ProductInput
from backend.domain.vectors import VectorStore
from backend.errors import InvalidInput, PermissionDenied, shown
from backend.security import Role
from backend.security import current as current_principal
from backend.security.paths import ImagePathPolicy, ImagePathRefused
from encoders.preprocess import DEFAULT_MAX_FILE_BYTES, decode_image


@dataclass(frozen=True)
class StagedImage:
    """An upload written to its own temporary file, not yet in the store."""

    temp: Path
    digest: str


class ImageBlobStore:
    """Uploaded image bytes, content-addressed so that re-uploads are idempotent.

    Each upload is first written to a temporary file of its own (so concurrent uploads of one
    image never share a file), then renamed atomically onto its final name `<sha256>.img`:
    readers see the whole file or none, and two renames of identical bytes both succeed.
    """

    # A temporary file this old was left by a process that died mid-upload.
    STALE_TEMP_S = 3600.0

    def __init__(self, root: Path) -> None:
        self._root = Path(os.path.realpath(root))
        self._incoming = self._root / "incoming"
        self._remove_stale_temps()

    def _remove_stale_temps(self) -> None:
        # Only old ones: another server sharing the folder may be writing fresh ones.
        if not self._incoming.is_dir():
            return
        cutoff = time.time() - self.STALE_TEMP_S
        for temp in self._incoming.glob("*.part"):
            with contextlib.suppress(OSError):
                if temp.stat().st_mtime < cutoff:
                    temp.unlink()

    @property
    def root(self) -> Path:
        return self._root

    def stage(self, data: bytes) -> StagedImage:
        self._incoming.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self._incoming, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the rename below must never expose a short file
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return StagedImage(Path(name), hashlib.sha256(data).hexdigest())

    def final_path(self, digest: str) -> Path:
        return self._root / digest[:2] / f"{digest}.img"

    def commit(self, staged: StagedImage) -> bool:
        """Move a staged upload onto its final name; True if that name did not exist yet."""
        final = self.final_path(staged.digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        created = not final.exists()
        os.replace(staged.temp, final)
        return created

    @staticmethod
    def discard(staged: StagedImage) -> None:
        staged.temp.unlink(missing_ok=True)

    def save(self, data: bytes) -> str:
        staged = self.stage(data)
        try:
            self.commit(staged)
        finally:
            self.discard(staged)
        return str(self.final_path(staged.digest))


@dataclass
class UpsertBatch:
    """One UpsertProducts call, built product by product as the stream arrives: uploads go
    to temporary files at once (memory holds one message, not the stream), and nothing
    reaches the image store or SQL before `commit`. `close` always runs: whatever was not
    committed is deleted, so a rejected call leaves no file behind."""

    service: CatalogService
    items: list[ProductInput] = field(default_factory=list)
    staged: list[list[StagedImage]] = field(default_factory=list)

    def add(self, item: ProductInput) -> None:
        index = len(self.items)
        self.service.check_images(index, item)
        uploads: list[StagedImage] = []
        self.items.append(item)
        self.staged.append(uploads)
        for data in item.image_bytes:
            uploads.append(self.service.blobs.stage(data))
        item.image_bytes = []

    def commit(self) -> list[UpsertOutcome]:
        return self.service.commit_batch(self)

    def close(self) -> None:
        for uploads in self.staged:
            for staged in uploads:
                self.service.blobs.discard(staged)
        self.staged = []


class CatalogService:
    def __init__(
        self,
        catalog: ProductCatalog,
        vectors: VectorStore,
        collection: str,
        blobs: ImageBlobStore,
        max_image_bytes: int,
        max_image_pixels: int,
        on_write: threading.Event | None = None,
        image_paths: ImagePathPolicy | None = None,
    ) -> None:
        self._catalog = catalog
        self._vectors = vectors
        self._collection = collection
        self._blobs = blobs
        self._max_image_bytes = max_image_bytes
        self._max_image_pixels = max_image_pixels
        self._on_write = on_write
        # Server-side paths: under the configured roots, or the uploads' own folder.
        paths = image_paths or ImagePathPolicy([], DEFAULT_MAX_FILE_BYTES)
        self._paths = paths.with_roots(blobs.root)

    @property
    def blobs(self) -> ImageBlobStore:
        return self._blobs

    def begin_upsert(self) -> UpsertBatch:
        return UpsertBatch(self)

    def upsert(self, items: list[ProductInput]) -> list[UpsertOutcome]:
        batch = self.begin_upsert()
        try:
            for item in items:
                batch.add(item)
            return batch.commit()
        finally:
            batch.close()

    def commit_batch(self, batch: UpsertBatch) -> list[UpsertOutcome]:
        if not batch.items:
            raise InvalidInput("no products in the request")
        for item, uploads in zip(batch.items, batch.staged, strict=True):
            item.images = [*item.images, *(str(self._blobs.final_path(s.digest))
                                           for s in uploads)]
        # Every check that needs no SQL runs before any upload is kept (NaN price, one SKU
        # twice...): a refused batch has only temporary files, which close() deletes.
        validate_products(batch.items)
        created: list[str] = []
        for uploads in batch.staged:
            for staged in uploads:
                if self._blobs.commit(staged):
                    created.append(str(self._blobs.final_path(staged.digest)))
        try:
            outcomes = self._catalog.upsert_products(batch.items)
        except BaseException:
            # Files this call added and no stored product refers to (another call may have
            # stored the same image meanwhile: its file stays).
            with contextlib.suppress(Exception):
                in_use = self._catalog.image_uris_in_use(created)
                for path in created:
                    if path not in in_use:
                        Path(path).unlink(missing_ok=True)
            raise
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

    def check_images(self, index: int, item: ProductInput) -> None:
        """Uploads must decode; paths must name allowed files (stored resolved). One message
        for a path that is missing and one that is forbidden: the reply reveals neither."""
        for n, data in enumerate(item.image_bytes):
            try:
                decode_image(data, max_bytes=self._max_image_bytes,
                             max_pixels=self._max_image_pixels)
            except ValueError as exc:
                raise InvalidInput(f"product {index} ({shown(item.sku)}) image {n}: {exc}") from exc
        confined = []
        for n, uri in enumerate(item.images):
            try:
                confined.append(self._paths.confine(uri))
            except ImagePathRefused:
                raise InvalidInput(f"product {index} ({shown(item.sku)}) image path {n}: not an "
                                   "allowed, readable image file") from None
        item.images = confined

    def _wake_indexer(self) -> None:
        if self._on_write is not None:
            self._on_write.set()
