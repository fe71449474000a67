"""The indexer drains the catalog outbox: encode -> upsert (idempotent point ids) -> mark done.
A crash anywhere loses nothing: undone rows are claimed again by the next drain."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from PIL.Image import Image

from backend.domain.payload import mutable_payload, product_payload
from backend.domain.photo_index import WORDS, Described, PhotoIndex
from backend.domain.ports import VectorEncoder
from backend.domain.types import Product
from backend.stores.catalog.repository import CatalogRepository, OutboxItem
from backend.stores.vectors.base import (
    CollectionSpec,
    PayloadPatch,
    VectorPoint,
    VectorStore,
    point_id,
)
from encoders.preprocess import ImageDecodeError, load_image_file

log = logging.getLogger(__name__)


@dataclass
class DrainStats:
    upserted_products: int = 0
    upserted_points: int = 0
    deleted_products: int = 0
    payload_updates: int = 0
    image_errors: int = 0
    rows: int = 0
    feature_bytes: int = 0  # local-feature files written


def collection_spec(name: str, encoder: VectorEncoder, shards: int = 1, replicas: int = 1
                    ) -> CollectionSpec:
    return CollectionSpec(name=name, vectors=dict(encoder.dims), sparse_vectors=[WORDS],
                          shards=shards, replicas=replicas)


class Indexer:
    def __init__(
        self,
        catalog: CatalogRepository,
        vectors: VectorStore,
        encoder: VectorEncoder,
        collection: str,
        max_image_pixels: int = 40_000_000,
        photo: PhotoIndex | None = None,
    ) -> None:
        self._catalog = catalog
        self._photo = photo
        self._vectors = vectors
        self._encoder = encoder
        self._collection = collection
        self._max_image_pixels = max_image_pixels

    def drain(self, batch: int = 64, progress: Callable[[int], object] | None = None) -> DrainStats:
        """Process outbox rows until none are pending. Returns what was done."""
        total = DrainStats()
        while True:
            stats = self.drain_once(batch)
            if stats.rows == 0:
                return total
            for name in total.__dataclass_fields__:
                setattr(total, name, getattr(total, name) + getattr(stats, name))
            if progress:
                progress(stats.rows)

    def drain_once(self, batch: int = 64) -> DrainStats:
        items = self._catalog.claim_outbox(batch)
        stats = DrainStats(rows=len(items))
        if not items:
            return stats
        collection = self._vectors.resolve(self._collection)
        # Rows are in id order, so the last op per product is its current state.
        last: dict[str, OutboxItem] = {}
        for item in items:
            last[item.product_id] = item
        products = self._catalog.get_products(list(last))
        gone = [pid for pid in last if pid not in products]
        if gone:
            self._vectors.delete_products(collection, gone)
            self.delete_features(collection, gone)
            stats.deleted_products = len(gone)
        needs_vectors = [products[pid] for pid, it in last.items()
                         if pid in products and it.op == "upsert"]
        payload_only = [products[pid] for pid, it in last.items()
                        if pid in products and it.op == "payload"]
        if needs_vectors:
            self._index_products(collection, needs_vectors, stats)
        if payload_only:
            self._vectors.set_payload(
                collection,
                [PayloadPatch(p.product_id, mutable_payload(p)) for p in payload_only],
            )
            stats.payload_updates = len(payload_only)
        self._catalog.mark_done([item.id for item in items])
        return stats

    def index_products(self, collection: str, products: list[Product]) -> DrainStats:
        """Encode and upsert products into a given collection (used by reindex)."""
        stats = DrainStats()
        self._index_products(collection, products, stats)
        return stats

    def _index_products(self, collection: str, products: list[Product], stats: DrainStats
                        ) -> None:
        version = self._encoder.model_version
        images: list[Image | None] = []
        texts: list[str | None] = []
        owners: list[tuple[Product, int]] = []
        for product in products:
            text = product.text_for_encoding()
            loaded = 0
            for ref in product.images:
                try:
                    image = load_image_file(ref.uri, max_pixels=self._max_image_pixels)
                except (OSError, ImageDecodeError) as exc:
                    # The product stays findable by text; the log says which image failed.
                    log.warning("product %s image %d unreadable: %s",
                                product.product_id, ref.position, exc)
                    stats.image_errors += 1
                    continue
                images.append(image)
                texts.append(text)
                owners.append((product, ref.position))
                loaded += 1
            if loaded == 0:
                images.append(None)
                texts.append(text)
                owners.append((product, -1))
        encoded = self._encoder.encode_many(images, texts)
        described = self._describe_images(images)
        points = [
            VectorPoint(
                id=point_id(product.product_id, position, version),
                vectors=vectors,
                payload=product_payload(product, position, version),
            )
            for (product, position), vectors in zip(owners, encoded, strict=True)
        ]
        # Features first: a point in the store always has its features on disk.
        stats.feature_bytes += self._write_features(collection, points, described)
        self._vectors.upsert(collection, points)
        self._delete_stale_points(collection, owners, version)
        self._prune_features(collection, points)
        stats.upserted_products += len(products)
        stats.upserted_points += len(points)

    def _delete_stale_points(
        self, collection: str, owners: list[tuple[Product, int]], version: str
    ) -> None:
        """Remove points of images a product no longer has (after the new ones are in, so the
        product never disappears from search)."""
        current: dict[str, set[int]] = {}
        for product, position in owners:
            current.setdefault(product.product_id, set()).add(position)
        stale: list[str] = []
        for product_id, positions in current.items():
            name = "text"
            for position, _ in self._vectors.get_vectors(collection, product_id, name):
                if position not in positions:
                    stale.append(point_id(product_id, position, version))
        if stale:
            self._vectors.delete_points(collection, stale)

    # --- local features (sidecar files + visual words) ------------------------------------

    def _describe_images(self, images: list[Image | None]) -> list[Described | None]:
        if self._photo is None:
            return [None] * len(images)
        return self._photo.describe(images)

    def _write_features(self, collection: str, points: list[VectorPoint],
                        described: list[Described | None]) -> int:
        """Store each image's features and give its point the visual words."""
        if self._photo is None:
            return 0
        entries = []
        for point, desc in zip(points, described, strict=True):
            if desc is None:
                continue
            if desc.words is not None:
                point.sparse[WORDS] = desc.words
            entries.append((point.id, point.payload.product_id, point.payload.position, desc))
        return self._photo.write(collection, entries)

    def _prune_features(self, collection: str, points: list[VectorPoint]) -> None:
        """Remove feature files of images the products no longer have (after their points)."""
        if self._photo is None:
            return
        keep: dict[str, set[str]] = {}
        for point in points:
            keep.setdefault(point.payload.product_id, set()).add(point.id)
        for product_id, ids in keep.items():
            self._photo.store.prune(collection, product_id, ids)

    def delete_features(self, collection: str, product_ids: list[str]) -> None:
        if self._photo is not None:
            self._photo.store.delete_products(collection, product_ids)

    def drop_features(self, collection: str) -> None:
        """Remove a dropped collection's feature files (reindex)."""
        if self._photo is not None:
            self._photo.store.drop(collection)
