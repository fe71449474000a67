"""MatchProduct: a merchant's listing -> the catalog items it may be, each with a verdict
(SAME / VARIANT / DIFFERENT), a calibrated probability and the attributes that differ.

Candidates come from both modalities: the photo finds the same product under another title,
the title finds products that share it but differ in size or material."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL.Image import Image

from backend.config import SearchSettings
from backend.domain.match_model import (
    VERDICTS,
    AttributeDiff,
    MatchCalibration,
    attribute_diffs,
    best_cosine,
    calibration_path,
    pair_features,
)
from backend.domain.payload import normalise_filters
from backend.domain.photo_search import decode_query_photo
from backend.domain.ports import ProductReader, VectorEncoder
from backend.domain.types import Filters, Product
from backend.domain.vectors import VectorStore
from backend.errors import InvalidInput, NotReady
from backend.security import current as current_principal
from encoders.localise import query_views
from encoders.priority import run_heavy

log = logging.getLogger(__name__)

_CANDIDATES_PER_MODALITY = 10
MAX_LISTING_IMAGES = 8


@dataclass
class Listing:
    title: str = ""
    description: str = ""
    images: list[bytes] = field(default_factory=list)
    size: str = ""
    material: str = ""
    colour: str = ""
    brand: str = ""
    merchant: str = ""

    def attributes(self) -> dict[str, str]:
        return {"size": self.size, "material": self.material, "colour": self.colour,
                "brand": self.brand}

    def text(self) -> str:
        parts = [self.title, self.description, self.brand, self.colour, self.material]
        return " . ".join(p for p in parts if p.strip())


@dataclass
class MatchResult:
    product: Product
    verdict: str
    probability: float
    similarity: float
    diff: list[AttributeDiff]


@dataclass
class ListingVectors:
    image_views: np.ndarray | None  # (V, d) image vectors of every view of every photo
    text: np.ndarray | None


async def encode_listing(encoder: VectorEncoder, images: list[Image], text: str
                         ) -> ListingVectors:
    views = [v for image in images for v in await run_heavy(query_views, image)]
    encoded = await asyncio.gather(*(encoder.encode(v, None) for v in views))
    text_vec = (await encoder.encode(None, text))["text"] if text else None
    image_views = np.stack([e["image"] for e in encoded]) if encoded else None
    return ListingVectors(image_views, text_vec)


def catalog_attributes(product: Product) -> dict[str, str]:
    return {"size": product.size, "material": product.material, "colour": product.colour,
            "brand": product.brand}


class MatchService:
    def __init__(
        self,
        catalog: ProductReader,
        vectors: VectorStore,
        encoder: VectorEncoder,
        collection: str,
        settings: SearchSettings,
        data_dir: Path,
    ) -> None:
        self._catalog = catalog
        self._vectors = vectors
        self._encoder = encoder
        self._collection = collection
        self._settings = settings
        self._data_dir = data_dir
        self._calibration: MatchCalibration | None = None

    def calibration(self) -> MatchCalibration:
        version = self._encoder.model_version
        if self._calibration is None or self._calibration.model_version != version:
            path = calibration_path(self._data_dir, version)
            if not path.is_file():
                raise NotReady(
                    f"matching is not calibrated for model {version}: run "
                    "`prodsearch eval --task match` (it fits and saves the calibration)"
                )
            try:
                self._calibration = MatchCalibration.load(path)
            except ValueError as exc:
                raise NotReady(f"{exc}: run `prodsearch eval --task match`") from exc
        return self._calibration

    def set_calibration(self, calibration: MatchCalibration) -> None:
        self._calibration = calibration

    async def match(self, listing: Listing, top_k: int = 5, filters: Filters | None = None
                    ) -> list[MatchResult]:
        if not listing.images and not listing.title.strip():
            raise InvalidInput("a listing needs at least a photo or a title")
        if len(listing.images) > MAX_LISTING_IMAGES:
            raise InvalidInput(f"at most {MAX_LISTING_IMAGES} photos per listing")
        if not 1 <= (top_k or 5) <= self._settings.max_top_k:
            raise InvalidInput(f"top_k must be between 1 and {self._settings.max_top_k}")
        calibration = self.calibration()
        images = [
            await decode_query_photo(data, self._settings)
            for data in listing.images
        ]
        vectors = await encode_listing(self._encoder, images, listing.text())
        # A storefront key matches only against what it may see (listed, or its own).
        principal = current_principal()
        flt = normalise_filters(principal.scope_filters(filters or Filters()))
        collection = await asyncio.to_thread(self._vectors.resolve, self._collection)
        candidate_ids = await asyncio.to_thread(self._candidates, collection, vectors, flt)
        products = await asyncio.to_thread(self._catalog.get_products, candidate_ids)
        visible = [products[pid] for pid in candidate_ids
                   if pid in products and principal.can_see(products[pid])]
        sims = [await asyncio.to_thread(self._similarities, collection, p.product_id, vectors)
                for p in visible]
        image_sims = [s[0] for s in sims if s[0] is not None]
        results = []
        for product, (image_sim, text_sim) in zip(visible, sims, strict=True):
            others = list(image_sims)
            if image_sim is not None:
                others.remove(image_sim)
            diffs = attribute_diffs(listing.attributes(), catalog_attributes(product))
            probs = calibration.probabilities(pair_features(
                image_sim, text_sim, diffs, max(others) if others else None))[0]
            best = int(np.argmax(probs))
            results.append(MatchResult(
                product=product,
                verdict=VERDICTS[best],
                probability=float(probs[best]),
                similarity=image_sim if image_sim is not None else text_sim,
                diff=diffs,
            ))
        # Best first: the likeliest to be the same product, then the likeliest variants.
        results.sort(key=lambda r: (VERDICTS.index(r.verdict), -r.probability))
        return results[: top_k or 5]

    def _candidates(self, collection: str, vectors: ListingVectors, flt: Filters) -> list[str]:
        ids: list[str] = []
        queries: list[tuple[str, np.ndarray]] = []
        if vectors.image_views is not None:
            queries += [("image", v) for v in vectors.image_views]
        if vectors.text is not None:
            queries.append(("text", vectors.text))
        for name, vector in queries:
            for point in self._vectors.search(collection, name, vector, flt,
                                              _CANDIDATES_PER_MODALITY):
                if point.payload.product_id not in ids:
                    ids.append(point.payload.product_id)
        return ids

    def _similarities(self, collection: str, product_id: str, vectors: ListingVectors
                      ) -> tuple[float | None, float]:
        image_sim = None
        if vectors.image_views is not None:
            found = self._vectors.get_vectors(collection, product_id, "image")
            if found:
                image_sim = best_cosine(vectors.image_views, np.stack([v for _, v in found]))
        text_sim = 0.0
        if vectors.text is not None:
            texts = self._vectors.get_vectors(collection, product_id, "text")
            if texts:
                text_sim = best_cosine(vectors.text, texts[0][1])
        return image_sim, text_sim
