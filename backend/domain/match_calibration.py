"""Match calibration as part of the catalog's life cycle: labelled listings made from the
catalog's own products (`match_pairs`), scored by `MatchService` exactly as it scores a
merchant's listing, a verdict model fitted on them and written atomically beside the data.

Stale means: there is no readable calibration for the encoder's model version and the
current match features, or the catalog version it was drawn from is not the catalog's
version now. Ingest and reindex refresh a stale calibration; `prodsearch calibrate` runs it
on demand. Images that cannot be read (missing, corrupt, over the configured pixel or byte
limit) are skipped and counted; until a new calibration is written the previous one stays
in use, so one bad image never leaves matching unavailable."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from backend.domain.match import MatchService, catalog_attributes
from backend.domain.match_folds import cross_validated, item_folds
from backend.domain.match_model import (
    FEATURES,
    VERDICTS,
    MatchCalibration,
    attribute_diffs,
    calibration_path,
)
from backend.domain.match_pairs import (
    CONDITIONS,
    DIFFERENT,
    ListingCase,
    build_cases,
    catalog_values,
)
from backend.domain.ports import VectorEncoder
from backend.domain.types import Filters, Product
from encoders.preprocess import ImageDecodeError, load_image_file

log = logging.getLogger(__name__)

MIN_ITEMS = 10
DEFAULT_ITEMS = 120
_CONCURRENT_LISTINGS = 4  # sampled products: 8 labelled listings each (4 kinds x 2 conditions)


class CalibrationCatalog(Protocol):
    """What calibration reads of the catalog."""

    def catalog_version(self) -> int: ...

    def iter_products(self, batch: int = 500, after: str = "") -> Iterator[list[Product]]: ...


class NotEnoughProducts(ValueError):
    pass


@dataclass(frozen=True)
class SkippedImage:
    sku: str
    uri: str
    reason: str


@dataclass(frozen=True)
class CalibrationStatus:
    path: Path
    stale: bool
    reason: str


@dataclass
class CalibrationReport:
    path: Path
    items: int
    skipped: list[SkippedImage]
    metrics: dict[str, object] = field(default_factory=dict)
    # condition -> "after" / "before" -> verdict_metrics(...)
    conditions: dict[str, dict[str, dict[str, object]]] = field(default_factory=dict)
    # One row per labelled listing (its held-out prediction): for error analysis, not saved.
    cases: list[dict[str, object]] = field(default_factory=list)

    def f1(self, verdict: str, condition: str, which: str = "after") -> float:
        per_verdict = self.conditions[condition][which]["per_verdict"]
        return float(per_verdict[verdict]["f1"])  # type: ignore[index]

    def to_dict(self) -> dict[str, object]:
        return {
            "task": "match",
            **self.metrics,
            "conditions": self.conditions,
            "items": self.items,
            "skipped_images": len(self.skipped),
            "skipped": [{"sku": s.sku, "uri": s.uri, "reason": s.reason} for s in self.skipped],
            "calibration_file": str(self.path),
        }


class MatchCalibrator:
    def __init__(self, catalog: CalibrationCatalog, match: MatchService,
                 encoder: VectorEncoder, data_dir: Path, *, max_image_pixels: int,
                 max_image_bytes: int) -> None:
        self._catalog = catalog
        self._match = match
        self._encoder = encoder
        self._data_dir = data_dir
        self._max_pixels = max_image_pixels
        self._max_bytes = max_image_bytes

    @property
    def path(self) -> Path:
        return calibration_path(self._data_dir, self._encoder.model_version)

    def status(self) -> CalibrationStatus:
        path = self.path
        if not path.is_file():
            return CalibrationStatus(path, True, "no calibration for this model version")
        try:
            current = MatchCalibration.load(path)
        except (OSError, ValueError, KeyError) as exc:
            return CalibrationStatus(path, True, f"unusable: {exc}")
        version = self._catalog.catalog_version()
        if current.catalog_version != version:
            return CalibrationStatus(
                path, True, f"catalog version {current.catalog_version} -> {version}")
        return CalibrationStatus(path, False, f"up to date at catalog version {version}")

    def refresh(self, items: int = DEFAULT_ITEMS,
                progress: Callable[[int], object] | None = None
                ) -> CalibrationReport | None:
        """Calibrate when stale; None when the calibration is current."""
        status = self.status()
        if not status.stale:
            return None
        log.info("match calibration is stale (%s): calibrating", status.reason)
        return self.calibrate(items, progress=progress)

    def sample(self, items: int, skip: int = 0
               ) -> tuple[list[Product], list[Image.Image], list[SkippedImage]]:
        """The first `items` products (in id order, after the first `skip` readable ones)
        whose first image loads under the configured limits; the others are skipped and
        reported."""
        products: list[Product] = []
        images: list[Image.Image] = []
        skipped: list[SkippedImage] = []
        for batch in self._catalog.iter_products():
            for product in batch:
                if not product.images:
                    continue
                uri = product.images[0].uri
                try:
                    image = load_image_file(uri, max_pixels=self._max_pixels,
                                            max_bytes=self._max_bytes)
                except (OSError, ImageDecodeError) as exc:
                    skipped.append(SkippedImage(product.sku, uri, str(exc)))
                    continue
                if skip > 0:
                    skip -= 1
                    continue
                products.append(product)
                images.append(image)
                if len(products) >= items:
                    return products, images, skipped
        return products, images, skipped

    def calibrate(self, items: int = DEFAULT_ITEMS, seed: int = 17,
                  progress: Callable[[int], object] | None = None,
                  baseline: MatchService | None = None, skip: int = 0) -> CalibrationReport:
        """Fit on all sampled items and write the calibration atomically; the held-out
        figures per condition come from k-fold by item (`match_folds`): each item's listings
        are predicted by a model fitted on the other folds' items. `baseline`: a second
        service (the dense-only photo path) whose cases are scored too, fitted on easy
        photos only, for a before/after report. `skip`: readable products passed over
        before sampling (an evaluation on other items than the default sample's)."""
        started = time.monotonic()
        version = self._catalog.catalog_version()
        products, images, skipped = self.sample(items, skip)
        for s in skipped:
            log.warning("match calibration: skipped %s (%s): %s", s.sku, s.uri, s.reason)
        if len(products) < MIN_ITEMS:
            raise NotEnoughProducts(
                f"matching needs at least {MIN_ITEMS} catalog products with readable images "
                f"to calibrate ({len(products)} found, {len(skipped)} images skipped)")
        cases = build_cases(products, images, self._neighbours(products), catalog_values(
            products), random.Random(seed))
        features, found = asyncio.run(self._score(cases, products, self._match, progress))
        hard = np.array([c.condition == "hard" for c in cases])
        labels = np.array([c.label for c in cases])
        item_fold = item_folds([p.product_id for p in products])
        fold = item_fold[[c.target for c in cases]]
        model_version = self._encoder.model_version

        def fit(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
            return MatchCalibration.fit(x, y, model_version).probabilities

        calibration = MatchCalibration.fit_both(features, labels, model_version)
        calibration.catalog_version, calibration.items = version, len(products)
        held = cross_validated(features, labels, fold, fit)
        conditions: dict[str, dict[str, dict[str, object]]] = {}
        for name in CONDITIONS:
            rows = hard if name == "hard" else ~hard
            conditions[name] = {"after": verdict_metrics(held[rows], found[rows],
                                                         labels[rows])}
        case_rows = [_case_row(products[c.target], c, features[k], bool(found[k]), held[k])
                     for k, c in enumerate(cases)]
        if baseline is not None:
            base_features, base_found = asyncio.run(
                self._score(cases, products, baseline, progress))
            base = cross_validated(base_features, labels, fold, fit, fit_rows=~hard)
            for name in CONDITIONS:
                rows = hard if name == "hard" else ~hard
                conditions[name]["before"] = verdict_metrics(base[rows], base_found[rows],
                                                             labels[rows])
        calibration.save(self.path)
        metrics: dict[str, object] = {
            "model_version": model_version,
            "catalog_version": version,
            "folds": len(set(item_fold.tolist())),
            "items_held_out": len(products),  # every item, once, in its fold
            "pairs_fitted": len(cases),  # the shipped model: all items
            "pairs_held_out": len(cases),
            "listings_per_condition": {name: int((hard if name == "hard" else ~hard).sum())
                                       for name in CONDITIONS},
            "seed": seed,
            "skip": skip,
            "seconds": round(time.monotonic() - started, 1),
        }
        return CalibrationReport(self.path, len(products), skipped, metrics, conditions,
                                 case_rows)

    def _neighbours(self, products: list[Product]) -> list[int]:
        """For each sampled item, the visually closest other sampled item (its DIFFERENT
        look-alike), from the catalog's own image vectors."""
        vectors = self._match.image_vectors([p.product_id for p in products])
        sims = vectors @ vectors.T
        np.fill_diagonal(sims, -2.0)
        return [int(j) for j in sims.argmax(axis=1)]

    async def _score(self, cases: list[ListingCase], products: list[Product],
                     service: MatchService, progress: Callable[[int], object] | None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Each case's features for its labelled product, as `service` scores a listing,
        and whether that product was among the listing's candidates."""
        # A few listings at a time, so that the encoder batches their photos and texts.
        slots = asyncio.Semaphore(_CONCURRENT_LISTINGS)

        async def one(case: ListingCase) -> tuple[np.ndarray, bool]:
            target = products[case.target]
            text = " . ".join(p for p in (case.title, case.attributes["brand"],
                                          case.attributes["colour"],
                                          case.attributes["material"]) if p)
            async with slots:
                evidence = await service.gather_evidence([case.photo], text, Filters(),
                                                         include=[target.product_id])
            diffs = attribute_diffs(case.attributes, catalog_attributes(target))
            if progress:
                progress(1)
            return (evidence.features(target.product_id, diffs),
                    target.product_id in evidence.found)

        scored = await asyncio.gather(*(one(case) for case in cases))
        rows = [features for features, _ in scored]
        found = [hit for _, hit in scored]
        return np.stack(rows), np.array(found)


def _case_row(product: Product, case: ListingCase, features: np.ndarray, found: bool,
              probs: np.ndarray) -> dict[str, object]:
    return {"sku": product.sku, "condition": case.condition, "label": VERDICTS[case.label],
            "found": found, "predicted": VERDICTS[int(probs.argmax())] if found else
            VERDICTS[DIFFERENT], "probabilities": [round(float(p), 4) for p in probs],
            "features": {n: round(float(v), 4) for n, v in zip(FEATURES, features,
                                                               strict=True)}}


def verdict_metrics(probs: np.ndarray, found: np.ndarray, truth: np.ndarray
                    ) -> dict[str, object]:
    """Precision / recall / F1 per verdict of the answer a user gets: a product that was not
    among the listing's candidates is not listed, which reads as DIFFERENT."""
    predicted = np.where(found, probs.argmax(axis=1), DIFFERENT)
    per_verdict: dict[str, dict[str, float]] = {}
    for k, name in enumerate(VERDICTS):
        tp = int(((predicted == k) & (truth == k)).sum())
        fp = int(((predicted == k) & (truth != k)).sum())
        fn = int(((predicted != k) & (truth == k)).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_verdict[name] = {"precision": round(precision, 4), "recall": round(recall, 4),
                             "f1": round(f1, 4), "support": int((truth == k).sum())}
    confidence = probs.max(axis=1)
    same = truth == 0
    return {
        "listings": len(truth),
        "per_verdict": per_verdict,
        "accuracy": round(float((predicted == truth).mean()), 4) if len(truth) else 0.0,
        "same_candidate_recall": round(float(found[same].mean()), 4) if same.any() else 0.0,
        "expected_calibration_error": round(
            _ece(confidence, probs.argmax(axis=1) == truth), 4) if len(truth) else 0.0,
    }


def _ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |accuracy - confidence| averaged over confidence bins."""
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for low, high in itertools.pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)
