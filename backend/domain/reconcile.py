"""Compare the SQL catalog (the source of truth) with the vector store, and repair the vector
store. Differences found:

- missing: a live product with no point of the current model version;
- stale: a point of another model version (left by an old index or an interrupted reindex);
- orphans: a point whose product is deleted or unknown, or whose image position the product
  no longer has (position -1 is the text-only point of a product without a readable image);
- drift: a point whose payload disagrees with the product in SQL (filters would lie);
- features missing: an image point whose local-feature file is missing, unreadable or of
  another features version (its visual words are as old: both are written together);
- feature orphans: a local-feature file without its point (left by a crash between the
  file write and the upsert, or a delete interrupted after the points went);
- descriptor index drift: the descriptor index snapshot (photo search's vote) lacks a
  feature file's descriptors or holds an older copy, or holds entries whose file is gone;
  repaired by syncing it with the files and writing a new snapshot.

Products with outbox rows still pending are in flight: the indexer will write them, so they
are counted as `pending` and not as differences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from backend.domain.payload import product_payload
from backend.domain.photo_index import PhotoIndex
from backend.domain.ports import IndexedCatalog, StoredFeatures
from backend.domain.types import Product
from backend.domain.vectors import IDENTITY_FIELDS, PayloadPatch, PointPayload, VectorStore


@dataclass
class ReconcileReport:
    products: int = 0
    points: int = 0
    pending: int = 0
    missing: list[str] = field(default_factory=list)  # product ids
    stale: list[str] = field(default_factory=list)  # point ids
    orphans: list[str] = field(default_factory=list)  # point ids
    drift: list[str] = field(default_factory=list)  # product ids
    features_missing: list[str] = field(default_factory=list)  # product ids
    feature_orphans: list[StoredFeatures] = field(default_factory=list)
    descriptors_missing: int = 0  # feature files the descriptor index lacks (or holds old)
    descriptors_orphaned: int = 0  # descriptor index entries without a feature file

    @property
    def differences(self) -> int:
        return (len(self.missing) + len(self.stale) + len(self.orphans) + len(self.drift)
                + len(self.features_missing) + len(self.feature_orphans)
                + self.descriptors_missing + self.descriptors_orphaned)

    def summary(self) -> str:
        return (f"{self.products} products, {self.points} points, {self.pending} pending; "
                f"missing {len(self.missing)}, stale {len(self.stale)}, "
                f"orphans {len(self.orphans)}, drift {len(self.drift)}, "
                f"features missing {len(self.features_missing)}, "
                f"feature orphans {len(self.feature_orphans)}, "
                f"descriptor index missing {self.descriptors_missing} / orphaned "
                f"{self.descriptors_orphaned}: "
                f"{self.differences} differences")


def add_diff(report: ReconcileReport, product_id: str, diff: ProductDiff) -> None:
    if diff.missing:
        report.missing.append(product_id)
    report.stale += diff.stale
    report.orphans += diff.orphans
    if diff.drift:
        report.drift.append(product_id)


def _comparable(payload: PointPayload) -> dict[str, object]:
    data = payload.to_dict()
    for name in IDENTITY_FIELDS:
        data.pop(name, None)
    if isinstance(data.get("price"), float):
        data["price"] = round(float(data["price"]), 4)  # type: ignore[arg-type]
    return data


@dataclass
class ProductDiff:
    """How one product's points differ from the product in SQL (None: deleted or unknown)."""

    missing: bool = False  # live, but no point of the current model version
    stale: list[str] = field(default_factory=list)  # point ids of another model version
    orphans: list[str] = field(default_factory=list)  # point ids it should not have
    drift: bool = False  # a payload disagrees with SQL

    @property
    def clean(self) -> bool:
        return not (self.missing or self.stale or self.orphans or self.drift)


def compare_product(product: Product | None, points: list[tuple[str, PointPayload]],
                    model_version: str) -> ProductDiff:
    """Compare one product with its points (the rules in the module docstring)."""
    diff = ProductDiff()
    if product is None:
        diff.orphans = [pid for pid, _ in points]
        return diff
    own = []
    for pid, payload in points:
        if payload.model_version != model_version:
            diff.stale.append(pid)
        else:
            own.append((pid, payload))
    if not own:
        diff.missing = True
        return diff
    positions = {ref.position for ref in product.images}
    has_image_point = any(p.position in positions for _, p in own)
    for pid, payload in own:
        if payload.position == -1 and not has_image_point:
            pass  # text-only point: no image, or none readable
        elif payload.position not in positions:
            diff.orphans.append(pid)
            continue
        expected = product_payload(product, payload.position, model_version)
        if _comparable(payload) != _comparable(expected):
            diff.drift = True
    return diff


class Reconciler:
    def __init__(self, catalog: IndexedCatalog, vectors: VectorStore, collection: str,
                 model_version: str, photo: PhotoIndex | None = None) -> None:
        self._photo = photo
        self._catalog = catalog
        self._vectors = vectors
        self._collection = collection
        self._version = model_version

    def check(self) -> ReconcileReport:
        report = ReconcileReport()
        collection = self._vectors.resolve(self._collection)
        pending = set(self._catalog.pending_product_ids())
        products: dict[str, Product] = {}
        for page in self._catalog.iter_products():
            for product in page:
                products[product.product_id] = product
        points = self._vectors.scroll_payloads(collection)
        report.products, report.points = len(products), len(points)
        report.pending = len(pending)

        by_product: dict[str, list[tuple[str, PointPayload]]] = {}
        for pid, payload in points:
            if payload.product_id not in pending:
                by_product.setdefault(payload.product_id, []).append((pid, payload))
        for product_id in sorted(set(by_product) | set(products)):
            if product_id not in pending:
                add_diff(report, product_id,
                         compare_product(products.get(product_id),
                                         by_product.get(product_id, []), self._version))
        current = {product_id: [(pid, p) for pid, p in own if p.model_version == self._version]
                   for product_id, own in by_product.items() if product_id in products}
        self._check_features(collection, report, current, pending)
        return report

    def check_products(self, products: dict[str, Product], product_ids: list[str]
                       ) -> ReconcileReport:
        """Check just these products (`products`: the live ones among them, read from SQL):
        one bounded slice of a full check."""
        report = ReconcileReport()
        collection = self._vectors.resolve(self._collection)
        points = self._vectors.product_payloads(collection, product_ids)
        by_product: dict[str, list[tuple[str, PointPayload]]] = {}
        for pid, payload in points:
            by_product.setdefault(payload.product_id, []).append((pid, payload))
        report.products, report.points = len(products), len(points)
        for product_id in product_ids:
            add_diff(report, product_id, compare_product(
                products.get(product_id), by_product.get(product_id, []), self._version))
        return report

    def _check_features(self, collection: str, report: ReconcileReport,
                        current: dict[str, list[tuple[str, PointPayload]]],
                        pending: set[str]) -> None:
        if self._photo is None:
            return
        orphaned = set(report.orphans)
        wanted = {pid: payload.product_id for own in current.values() for pid, payload in own
                  if payload.position >= 0 and pid not in orphaned}
        files = {f.point_id: f for f in self._photo.store.scan(collection)}
        version = self._photo.version
        missing = {product_id for pid, product_id in wanted.items()
                   if pid not in files or files[pid].version != version}
        report.features_missing = sorted(missing)
        report.feature_orphans = [f for pid, f in files.items()
                                  if pid not in wanted and f.product_id not in pending]
        drift = self._photo.index_drift(collection)
        report.descriptors_missing, report.descriptors_orphaned = drift.added, drift.removed

    def fix(self, report: ReconcileReport,
            index: Callable[[str, list[Product]], object] | None) -> ReconcileReport:
        """Repair what `report` found and check everything again."""
        self.repair(report, index)
        return self.check()

    def repair(self, report: ReconcileReport,
               index: Callable[[str, list[Product]], object] | None) -> None:
        """Repair what `report` found (deletes first, then re-index, then payloads).
        `index(collection, products)` encodes and upserts products; it also rewrites drifted
        products, whose vectors may be as old as their payload (a payload patch alone would
        hide that). Without it, missing products are left for the indexer and drifted ones
        get their payload patched."""
        collection = self._vectors.resolve(self._collection)
        doomed = [*report.orphans, *report.stale]
        if doomed:
            self._vectors.delete_points(collection, doomed)
        if report.feature_orphans and self._photo is not None:
            self._photo.store.delete_paths(collection, report.feature_orphans)
        if index is not None:
            # Re-indexing a product writes its feature files and visual words again.
            found = self._catalog.get_products(list(dict.fromkeys(
                [*report.missing, *report.drift, *report.features_missing])))
            if found:
                index(collection, list(found.values()))
            self._sync_descriptors(collection, report)
            return
        if report.drift:
            found = self._catalog.get_products(report.drift)
            patches = []
            for product in found.values():
                values = product_payload(product, -1, self._version).to_dict()
                for name in IDENTITY_FIELDS:
                    values.pop(name, None)
                patches.append(PayloadPatch(product.product_id, values))
            if patches:
                self._vectors.set_payload(collection, patches)
        self._sync_descriptors(collection, report)

    def _sync_descriptors(self, collection: str, report: ReconcileReport) -> None:
        """After the feature files are repaired: the descriptor index follows them."""
        if self._photo is not None and (report.feature_orphans or report.features_missing
                                        or report.descriptors_missing
                                        or report.descriptors_orphaned):
            self._photo.sync(collection)
