"""Reindex: build a new vector collection from the SQL catalog with the current encoder, check
it against the one being served, then switch the alias (server) or pointer (embedded) to it.

Physical collections are named `<alias>__<model version>` (non-alphanumerics as `_`), with a
`-r<N>` suffix when that name is taken (a rebuild with the same model), so the model version a
collection was built with can be read back from its name.

Zero-downtime: searches resolve the alias once per request, so a search that started before
the switch finishes on the old collection and one that starts after it uses the new one; the
old collection is dropped only after a grace period (or kept with `keep_old`). Catalog writes
that arrive while the new collection is being built are replayed into it from the outbox (by
catalog version) before and once more after the switch.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from backend.domain.indexing import Indexer, collection_spec
from backend.domain.photo_index import PhotoIndex
from backend.domain.ports import IndexedCatalog, ProductReader, VectorEncoder
from backend.domain.types import Filters, Product
from backend.domain.vectors import VectorStore
from backend.errors import ConfigError

log = logging.getLogger(__name__)

_REBUILD = re.compile(r"-r\d+$")


class ModelVersionMismatch(ConfigError):
    """The served collection was built by another model version than the running encoder."""


def safe_version(version: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in version)


def physical_name(alias: str, version: str, existing: Iterable[str] = ()) -> str:
    """`<alias>__<safe version>`, or with `-r2`, `-r3`, ... when that name is taken."""
    base = f"{alias}__{safe_version(version)}"
    taken = set(existing)
    if base not in taken:
        return base
    n = 2
    while f"{base}-r{n}" in taken:
        n += 1
    return f"{base}-r{n}"


def built_by(alias: str, physical: str) -> str | None:
    """The (safe) model version in a physical collection name; None for a name not made by
    `physical_name` (then the version is unknown and not checked)."""
    prefix = f"{alias}__"
    if not physical.startswith(prefix):
        return None
    return _REBUILD.sub("", physical[len(prefix):]) or None


def check_model_version(vectors: VectorStore, alias: str, model_version: str) -> str | None:
    """The collection the alias points at (None if there is none yet). Raises
    ModelVersionMismatch if it was built with another model version: its vectors do not
    answer this encoder's queries (other dimensions or another space)."""
    current = vectors.resolve(alias)
    if current == alias:
        return None
    version = built_by(alias, current)
    if version is not None and version != safe_version(model_version):
        raise ModelVersionMismatch(
            f"the vector collection {current!r} behind {alias!r} was built by model version "
            f"{version!r}, but this process runs {safe_version(model_version)!r}: run "
            f"`prodsearch reindex` (it builds a collection for the new model and switches "
            f"over with no downtime), or configure the encoder the collection was built with")
    return current


# ------------------------------------------------------------------------------- quality check


@dataclass
class Quality:
    """Retrieval on a sample of catalog items, against one collection."""

    sample: int = 0
    photo_recall_at_1: float = 0.0  # a phone-photo-like rendering of the item's image
    text_recall_at_5: float = 0.0  # the product title as the query

    def drop_from(self, old: Quality) -> float:
        """The largest recall drop from `old` to this (positive = worse)."""
        return max(old.photo_recall_at_1 - self.photo_recall_at_1,
                   old.text_recall_at_5 - self.text_recall_at_5)


def pick_sample(catalog: ProductReader, size: int, seed: int = 0) -> list[Product]:
    """A fixed random sample of live products (reservoir over one pass of the catalog)."""
    rng = random.Random(seed)
    sample: list[Product] = []
    seen = 0
    for page in catalog.iter_products():
        for product in page:
            seen += 1
            if len(sample) < size:
                sample.append(product)
            else:
                j = rng.randrange(seen)
                if j < size:
                    sample[j] = product
    return sample


def _first_image(product: Product) -> Image.Image | None:
    from encoders.preprocess import ImageDecodeError, load_image_file

    for ref in product.images:
        try:
            return load_image_file(ref.uri)
        except (OSError, ImageDecodeError):
            continue
    return None


@dataclass
class Queries:
    """Rendered query photos and title texts for a sample, made once and encoded per model."""

    products: list[Product]
    photos: list[Image.Image | None]

    @classmethod
    def make(cls, products: list[Product], seed: int = 0) -> Queries:
        from encoders.photo_conditions import EASY, render_photo

        rng = random.Random(seed)
        photos: list[Image.Image | None] = []
        for product in products:
            image = _first_image(product)
            photos.append(None if image is None else render_photo(image, rng, EASY)[0])
        return cls(products, photos)


def _ranked_products(vectors: VectorStore, collection: str, name: str, vector: np.ndarray,
                     limit: int) -> list[str]:
    hits = vectors.search(collection, name, vector, Filters(), limit * 4)
    out: list[str] = []
    for hit in hits:
        if hit.payload.product_id not in out:
            out.append(hit.payload.product_id)
    return out[:limit]


def measure(vectors: VectorStore, collection: str, encoder: VectorEncoder, queries: Queries
            ) -> Quality:
    """Photo Recall@1 and title Recall@5 of `collection`, queries encoded by `encoder` (the
    model the collection was built with), searched as SearchService does (fused if present)."""
    with_photo = [(p, ph) for p, ph in zip(queries.products, queries.photos, strict=True)
                  if ph is not None]
    photo_vecs = encoder.encode_many([ph for _, ph in with_photo], [None] * len(with_photo))
    text_vecs = encoder.encode_many([None] * len(queries.products),
                                    [p.title for p in queries.products])
    photo_hits = 0
    for (product, _), vecs in zip(with_photo, photo_vecs, strict=True):
        name = "fused" if "fused" in vecs else "image"
        ranked = _ranked_products(vectors, collection, name, vecs[name], 1)
        photo_hits += bool(ranked) and ranked[0] == product.product_id
    text_hits = 0
    for product, vecs in zip(queries.products, text_vecs, strict=True):
        name = "fused" if "fused" in vecs else "text"
        text_hits += product.product_id in _ranked_products(
            vectors, collection, name, vecs[name], 5)
    return Quality(
        sample=len(queries.products),
        photo_recall_at_1=photo_hits / len(with_photo) if with_photo else 0.0,
        text_recall_at_5=text_hits / len(queries.products) if queries.products else 0.0,
    )


# ------------------------------------------------------------------------------------ reindex


@dataclass
class ReindexResult:
    old: str | None
    new: str
    model_version: str
    products: int = 0
    points: int = 0
    replayed: int = 0  # products changed during the build and written again
    switched: bool = False
    dropped_old: bool = False
    old_quality: Quality | None = None
    new_quality: Quality | None = None
    message: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class Reindexer:
    def __init__(
        self,
        catalog: IndexedCatalog,
        vectors: VectorStore,
        encoder: VectorEncoder,
        alias: str,
        *,
        shards: int = 1,
        replicas: int = 1,
        batch: int = 64,
        max_image_pixels: int = 40_000_000,
        photo: PhotoIndex | None = None,
    ) -> None:
        self._catalog = catalog
        self._vectors = vectors
        self._encoder = encoder
        self._alias = alias
        self._shards, self._replicas = shards, replicas
        self._batch = batch
        self._indexer = Indexer(catalog, vectors, encoder, alias, max_image_pixels, photo=photo)

    def _write(self, collection: str, products: list[Product]) -> int:
        points = 0
        for start in range(0, len(products), self._batch):
            chunk = products[start:start + self._batch]
            points += self._indexer.index_products(collection, chunk).upserted_points
        return points

    def _replay(self, collection: str, since: int) -> tuple[int, int]:
        """Write again every product changed after catalog version `since` (deleted ones are
        removed). Returns (products, the version now covered)."""
        now = self._catalog.catalog_version()  # read first: a later change is replayed later
        changed = self._catalog.changed_since(since)
        if changed:
            found = self._catalog.get_products(changed)
            gone = [pid for pid in changed if pid not in found]
            if gone:
                self._vectors.delete_products(collection, gone)
                self._indexer.delete_features(collection, gone)
            if found:
                self._write(collection, list(found.values()))
        return len(changed), now

    def build(self, progress: Callable[[int], object] | None = None,
              total: Callable[[int], object] | None = None) -> tuple[str, int, int, int]:
        """Create and fill a new collection; returns (name, products, points, covered
        catalog version)."""
        self._encoder.start()
        existing = self._vectors.list_collections()
        name = physical_name(self._alias, self._encoder.model_version, existing)
        self._vectors.ensure_collection(
            collection_spec(name, self._encoder, self._shards, self._replicas))
        covered = self._catalog.catalog_version()
        if total is not None:
            total(sum(len(page) for page in self._catalog.iter_products()))
        products = points = 0
        for page in self._catalog.iter_products(self._batch):
            points += self._write(name, page)
            products += len(page)
            if progress is not None:
                progress(len(page))
        self._vectors.build_index(name)
        return name, products, points, covered

    def run(
        self,
        *,
        force: bool = False,
        margin: float = 0.02,
        sample: int = 50,
        baseline_encoder: VectorEncoder | None = None,
        keep_old: bool = False,
        grace_s: float = 5.0,
        check: bool = True,
        progress: Callable[[int], object] | None = None,
        total: Callable[[int], object] | None = None,
    ) -> ReindexResult:
        """Build, check, switch. `baseline_encoder` encodes queries for the current
        collection (its own model); when the current collection was built by this encoder's
        model version, this encoder is used. Without either the check is skipped (noted)."""
        started = time.perf_counter()
        resolved = self._vectors.resolve(self._alias)
        old = None if resolved == self._alias else resolved
        new, products, points, covered = self.build(progress, total)
        result = ReindexResult(old=old, new=new, model_version=self._encoder.model_version,
                               products=products, points=points)
        replayed, covered = self._replay(new, covered)
        result.replayed += replayed

        if check and old is not None:
            queries = Queries.make(pick_sample(self._catalog, sample))
            same_model = built_by(self._alias, old) == safe_version(
                self._encoder.model_version)
            baseline = self._encoder if same_model else baseline_encoder
            result.new_quality = measure(self._vectors, new, self._encoder, queries)
            if baseline is None:
                result.notes.append(
                    f"no encoder for the current collection's model ({built_by(self._alias, old)}"
                    "): its recall was not measured, so the margin was not checked")
            else:
                baseline.start()
                result.old_quality = measure(self._vectors, old, baseline, queries)
                drop = result.new_quality.drop_from(result.old_quality)
                if drop > margin and not force:
                    self._vectors.drop_collection(new)
                    self._indexer.drop_features(new)
                    result.message = (
                        f"refused: recall drops by {drop:.3f} (more than the margin {margin}); "
                        f"{new} was removed and {old} stays in service (--force switches "
                        "anyway)")
                    result.seconds = time.perf_counter() - started
                    return result

        self._indexer.sync_descriptors(new)
        self._vectors.set_alias(self._alias, new)
        result.switched = True
        # Changes the indexer wrote to the old collection just before the switch.
        replayed, covered = self._replay(new, covered)
        result.replayed += replayed
        if old is not None and not keep_old:
            # Searches that resolved the alias before the switch finish on the old collection.
            time.sleep(grace_s)
            self._vectors.drop_collection(old)
            self._indexer.drop_features(old)
            result.dropped_old = True
        result.message = f"switched {self._alias!r} to {new}" + (
            f" (was {old})" if old else "")
        result.seconds = time.perf_counter() - started
        return result


def baseline_encoder_for(current: str, alias: str, make: Callable[[dict[str, object]],
                         VectorEncoder | None], candidates: list[dict[str, object]]
                         ) -> VectorEncoder | None:
    """The first encoder configuration (settings overrides for `encoder`) whose model version
    is the one `current` was built with, e.g. the same text model without the fused vector
    (the collection before the fusion model shipped)."""
    want = built_by(alias, current)
    if want is None:
        return None
    for overrides in candidates:
        try:
            encoder = make(overrides)
        except (ValueError, OSError, ConfigError) as exc:
            log.debug("baseline candidate %s: %s", overrides, exc)
            continue
        if encoder is not None and safe_version(encoder.model_version) == want:
            return encoder
    return None


def write_report(result: ReindexResult, path: Path) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n",
                    encoding="utf-8")


def reindex_on_start(catalog: IndexedCatalog, vectors: VectorStore,
                     encoder: VectorEncoder, alias: str, *, shards: int = 1, replicas: int = 1,
                     batch: int = 64, max_image_pixels: int = 40_000_000,
                     photo: PhotoIndex | None = None) -> ReindexResult:
    """The embedded default (and the demo) rebuild for a new model version by themselves, with
    a progress bar; the old collection is kept (nothing searches it, no grace needed) until a
    later `prodsearch reindex` or a manual drop. No recall check: the old collection cannot
    serve this encoder's queries anyway."""
    from tqdm import tqdm

    log.warning("model version changed: re-indexing the catalog for %s", encoder.model_version)
    reindexer = Reindexer(catalog, vectors, encoder, alias, shards=shards,
                          replicas=replicas, batch=batch, max_image_pixels=max_image_pixels,
                          photo=photo)
    with tqdm(desc="reindex", unit="product") as bar:

        def set_total(n: int) -> None:
            bar.total = n
            bar.refresh()

        result = reindexer.run(check=False, keep_old=True, grace_s=0.0, progress=bar.update,
                               total=set_total)
    log.warning("%s: %d products, %d vectors", result.message, result.products, result.points)
    return result
