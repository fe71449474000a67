"""The indexer drains the catalog outbox: encode -> upsert (idempotent point ids) -> verify ->
mark done. A crash anywhere loses nothing: undone rows are claimed again by the next drain.

Rows are coalesced per product, and the product's *current* SQL state is what gets written
(rows only say which products changed and how much): a product that is gone is deleted; one
with any 'upsert' or 'delete' row in the batch (a re-created product) is encoded again; one
with only 'payload' rows gets a payload patch. A row is marked done only once the product's
points, read back after the write, agree with the product as SQL has it then; otherwise it
stays pending and the next pass redoes it (so `indexed_version` never counts a change the
index does not show).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL.Image import Image

from backend.domain.index_maintainer import IndexMaintainer
from backend.domain.lexical import LEXICAL, product_vector
from backend.domain.payload import mutable_payload, product_payload
from backend.domain.photo_index import WORDS, Described, PhotoIndex
from backend.domain.ports import IndexedCatalog, OutboxItem, VectorEncoder
from backend.domain.reconcile import compare_product
from backend.domain.types import Product
from backend.domain.vectors import (
    CollectionSpec,
    PayloadPatch,
    PointPayload,
    VectorPoint,
    VectorStore,
    point_id,
)
from encoders.preprocess import ImageDecodeError, load_image_file

log = logging.getLogger(__name__)

# What a batch must do for one product, strongest first.
ENCODE, DELETE, PAYLOAD = "encode", "delete", "payload"


@dataclass
class DrainStats:
    upserted_products: int = 0
    upserted_points: int = 0
    deleted_products: int = 0
    payload_updates: int = 0
    image_errors: int = 0
    rows: int = 0
    done: int = 0  # rows marked done (the others stay pending: not verified)
    unverified_products: int = 0
    feature_bytes: int = 0  # local-feature files written


def collection_spec(name: str, encoder: VectorEncoder, shards: int = 1, replicas: int = 1
                    ) -> CollectionSpec:
    return CollectionSpec(name=name, vectors=dict(encoder.dims),
                          sparse_vectors=[WORDS, LEXICAL],
                          shards=shards, replicas=replicas)


def plan(items: list[OutboxItem], live: set[str]) -> dict[str, str]:
    """product id -> ENCODE, DELETE or PAYLOAD for a batch of outbox rows (any order), given
    which products are live in SQL now. A payload row never hides an earlier upsert."""
    ops: dict[str, set[str]] = {}
    for item in items:
        ops.setdefault(item.product_id, set()).add(item.op)
    actions = {}
    for product_id, seen in ops.items():
        if product_id not in live:
            actions[product_id] = DELETE
        elif seen <= {"payload"}:
            actions[product_id] = PAYLOAD
        else:  # an upsert, or a delete before the product came back: new content
            actions[product_id] = ENCODE
    return actions


class Indexer:
    def __init__(
        self,
        catalog: IndexedCatalog,
        vectors: VectorStore,
        encoder: VectorEncoder,
        collection: str,
        max_image_pixels: int = 40_000_000,
        flush_interval_s: float = 0.0,
        photo: PhotoIndex | None = None,
        maintainer: IndexMaintainer | None = None,
    ) -> None:
        # Told how many points each pass wrote, to build the vector index after bulk writes.
        self.maintainer = maintainer
        self._catalog = catalog
        self._photo = photo
        self._vectors = vectors
        self._encoder = encoder
        self._collection = collection
        self._max_image_pixels = max_image_pixels
        self._flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()

    def drain(self, batch: int = 64, progress: Callable[[int], object] | None = None) -> DrainStats:
        """Process outbox rows until none are pending, or until a pass verifies nothing
        (those rows stay pending for a later drain). Returns what was done."""
        total = DrainStats()
        while True:
            stats = self.drain_once(batch)
            for name in total.__dataclass_fields__:
                setattr(total, name, getattr(total, name) + getattr(stats, name))
            if stats.rows == 0 or stats.done == 0:
                return total
            if progress:
                progress(stats.done)

    def drain_once(self, batch: int = 64) -> DrainStats:
        items = self._catalog.claim_outbox(batch)
        stats = DrainStats(rows=len(items))
        if not items:
            return stats
        collection = self._vectors.resolve(self._collection)
        wanted = list(dict.fromkeys(item.product_id for item in items))
        products = self._catalog.get_products(wanted)
        actions = plan(items, set(products))
        wrote: dict[str, Product | None] = {pid: products.get(pid) for pid in wanted}
        written = self._apply(collection, actions, products, stats)
        claimed: dict[str, int] = {}
        for item in items:
            claimed[item.product_id] = max(claimed.get(item.product_id, 0),
                                           item.catalog_version)

        verified = self._verified(collection, wanted, wrote, written, claimed)
        retry = [pid for pid in wanted if pid not in verified and actions[pid] == PAYLOAD]
        if retry:
            # A payload patch cannot add points that were never written: encode those.
            again = self._catalog.get_products(retry)
            wrote.update({pid: again.get(pid) for pid in retry})
            written.update(self._apply(collection, dict.fromkeys(retry, ENCODE), again, stats))
            verified |= self._verified(collection, retry, wrote, written, claimed)
        stats.unverified_products = len(wanted) - len(verified)
        if stats.unverified_products:
            failing = [pid for pid in wanted if pid not in verified]
            attempts = max(item.attempts for item in items if item.product_id in failing)
            # A first miss is usually a write racing the pass; repeated ones are worth a look.
            log.log(logging.WARNING if attempts >= 3 else logging.INFO,
                    "indexer: %d of %d products do not match SQL after writing (e.g. %s, "
                    "attempt %d); their outbox rows stay pending",
                    len(failing), len(wanted), ", ".join(failing[:3]), attempts)
        self._flush_if_due(collection)
        stats.done = self._catalog.mark_done(
            [item.id for item in items if item.product_id in verified])
        if self.maintainer is not None:
            self.maintainer.written(stats.upserted_points)
        return stats

    def _apply(self, collection: str, actions: dict[str, str], products: dict[str, Product],
               stats: DrainStats) -> dict[str, set[str]]:
        """Write what `actions` say; returns product id -> point ids written by encoding."""
        gone = [pid for pid, action in actions.items()
                if action == DELETE or pid not in products]
        encode = [products[pid] for pid, action in actions.items()
                  if action == ENCODE and pid in products]
        patch = [products[pid] for pid, action in actions.items()
                 if action == PAYLOAD and pid in products]
        if gone:
            self._vectors.delete_products(collection, gone)
            self.delete_features(collection, gone)
            stats.deleted_products += len(gone)
        written: dict[str, set[str]] = {}
        if encode:
            written = self._index_products(collection, encode, stats)
        if patch:
            self._vectors.set_payload(
                collection, [PayloadPatch(p.product_id, mutable_payload(p)) for p in patch])
            stats.payload_updates += len(patch)
        return written

    def _verified(self, collection: str, product_ids: list[str],
                  wrote: dict[str, Product | None], written: dict[str, set[str]],
                  claimed: dict[str, int]) -> set[str]:
        """The products whose rows may be marked done: their points (still including every
        point just written) agree with SQL as it is now, or with the state just written when
        a newer change of the product is already pending (the next pass writes that one, and
        until then `indexed_version` stays below it). Reads SQL, then the points, then the
        outbox: a change that lands in between is either seen or still pending."""
        current = self._catalog.get_products(product_ids)
        points: dict[str, list[tuple[str, PointPayload]]] = {}
        for pid, payload in self._vectors.product_payloads(collection, product_ids):
            points.setdefault(payload.product_id, []).append((pid, payload))
        version = self._encoder.model_version
        ok: set[str] = set()
        behind: list[str] = []
        for pid in product_ids:
            own = points.get(pid, [])
            if not written.get(pid, set()) <= {point for point, _ in own}:
                continue
            if compare_product(current.get(pid), own, version).clean:
                ok.add(pid)
            elif compare_product(wrote.get(pid), own, version).clean:
                behind.append(pid)
        if behind:
            newest = self._catalog.newest_pending_versions(behind)
            ok.update(pid for pid in behind if newest.get(pid, 0) > claimed[pid])
        return ok

    def _flush_if_due(self, collection: str) -> None:
        """Bound how much a lost machine (not just a killed process) can take back."""
        if self._flush_interval_s <= 0:
            return
        now = time.monotonic()
        if now - self._last_flush >= self._flush_interval_s:
            self._vectors.flush(collection)
            self._last_flush = now

    def index_products(self, collection: str, products: list[Product]) -> DrainStats:
        """Encode and upsert products into a given collection (used by reindex)."""
        stats = DrainStats()
        self._index_products(collection, products, stats)
        return stats

    def _index_products(self, collection: str, products: list[Product], stats: DrainStats
                        ) -> dict[str, set[str]]:
        """Encode and upsert; returns product id -> the point ids written."""
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
        lexical = {p.product_id: product_vector(p) for p in products}
        points = [
            VectorPoint(
                id=point_id(product.product_id, position, version),
                vectors=vectors,
                payload=product_payload(product, position, version),
                sparse={LEXICAL: sparse} if (sparse := lexical[product.product_id]) else {},
            )
            for (product, position), vectors in zip(owners, encoded, strict=True)
        ]
        # Features first: a point in the store always has its features on disk.
        stats.feature_bytes += self._write_features(collection, points, described)
        self._vectors.upsert(collection, points)
        written: dict[str, set[str]] = {}
        for point in points:
            written.setdefault(point.payload.product_id, set()).add(point.id)
        self._delete_stale_points(collection, written)
        self._prune_features(collection, points)
        stats.upserted_products += len(products)
        stats.upserted_points += len(points)
        return written

    def _delete_stale_points(self, collection: str, written: dict[str, set[str]]) -> None:
        """Remove every other point of these products: images they no longer have, a
        text-only point, another model version's (after the new ones are in, so the product
        never disappears from search)."""
        stale = [pid for pid, payload in self._vectors.product_payloads(collection, list(written))
                 if pid not in written.get(payload.product_id, ())]
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
            self._photo.prune(collection, product_id, ids)

    def delete_features(self, collection: str, product_ids: list[str]) -> None:
        if self._photo is not None:
            self._photo.delete_products(collection, product_ids)

    def sync_descriptors(self, collection: str) -> None:
        """Build (or bring in line) the collection's descriptor index from its feature files
        and snapshot it, so that the first photo query after a switch does not build it."""
        if self._photo is not None:
            self._photo.sync(collection)

    def drop_features(self, collection: str) -> None:
        """Remove a dropped collection's feature files (reindex)."""
        if self._photo is not None:
            self._photo.drop(collection)
