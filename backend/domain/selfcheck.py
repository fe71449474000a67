"""The running server's self-check: finds and repairs differences between the SQL catalog and
the vector store (missing, stale, orphaned and drifted points; see `reconcile`) without an
operator, in bounded slices so that it never holds up searches or the indexer for long.

Each slice checks the next `batch` products in id order and every product that owns one of
the next `batch` points in point-id order (the second walk finds points of deleted or unknown
products). Both walks wrap around, so every product and point is checked once per round.
Products with outbox rows pending are in flight and skipped. Slices run in the indexer's
thread between drains: no repair races the indexer, and a change committed while a slice
runs stays pending, so the next drain writes it again over anything the slice wrote.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from backend.domain.indexing import Indexer
from backend.domain.ports import IndexedCatalog
from backend.domain.reconcile import Reconciler, ReconcileReport
from backend.domain.types import Product
from backend.domain.vectors import VectorStore

log = logging.getLogger(__name__)

KINDS = ("missing", "stale", "orphans", "drift")


@dataclass
class SliceReport:
    products: int = 0  # products checked
    found: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    repaired: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    round_done: bool = False  # both walks wrapped around in this slice

    @property
    def drift_found(self) -> int:
        return sum(self.found.values())


def _counts(report: ReconcileReport) -> dict[str, int]:
    return {kind: len(getattr(report, kind)) for kind in KINDS}


class SelfCheck:
    def __init__(self, catalog: IndexedCatalog, vectors: VectorStore, indexer: Indexer,
                 collection: str, model_version: str, batch: int = 200) -> None:
        self._catalog = catalog
        self._vectors = vectors
        self._indexer = indexer
        self._collection = collection
        self._reconciler = Reconciler(catalog, vectors, collection, model_version)
        self._batch = batch
        self._product_after = ""  # last product id checked
        self._point_offset: str | None = None  # next point to check
        self._products_wrapped = self._points_wrapped = False

    def run_slice(self) -> SliceReport:
        collection = self._vectors.resolve(self._collection)
        page = next(self._catalog.iter_products(self._batch, after=self._product_after), [])
        if len(page) < self._batch:
            self._product_after, self._products_wrapped = "", True
        else:
            self._product_after = page[-1].product_id
        points, self._point_offset = self._vectors.scroll_page(
            collection, self._point_offset, self._batch)
        if self._point_offset is None:
            self._points_wrapped = True

        live: dict[str, Product] = {p.product_id: p for p in page}
        owners = {payload.product_id for _, payload in points} - set(live)
        live.update(self._catalog.get_products(sorted(owners)))
        # Read last: anything changed since the reads above is pending, so skipped.
        candidates = set(live) | owners
        pending = set(self._catalog.pending_product_ids(sorted(candidates)))
        ids = sorted(candidates - pending)
        result = SliceReport(products=len(ids))
        round_done = self._products_wrapped and self._points_wrapped
        if round_done:
            self._products_wrapped = self._points_wrapped = False
        result.round_done = round_done
        if not ids:
            return result
        found = self._reconciler.check_products({i: live[i] for i in ids if i in live}, ids)
        result.found = _counts(found)
        if not found.differences:
            return result
        log.warning("self-check: %s in %d products; repairing",
                    ", ".join(f"{n} {k}" for k, n in result.found.items() if n), len(ids))
        self._reconciler.repair(found, self._indexer.index_products)
        left = _counts(self._reconciler.check_products(self._catalog.get_products(ids), ids))
        result.repaired = {k: max(0, result.found[k] - left[k]) for k in KINDS}
        return result
