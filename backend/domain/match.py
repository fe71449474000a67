"""MatchProduct: a merchant's listing -> the catalog items it may be, each with a verdict
(SAME / VARIANT / DIFFERENT), a calibrated probability and the attributes that differ.

Candidates come from both modalities: the photo finds the same product under another title
(through the photo search: visual words and dense vectors, verified geometrically), the
title finds products that share it but differ in size or material. The verdict model reads
image and text similarity, the photo's geometric verification and attribute differences;
`backend.domain.match_calibration` fits it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL.Image import Image

from backend.config import SearchSettings
from backend.domain.match_model import (
    NO_VERIFICATION,
    VERDICTS,
    AttributeDiff,
    MatchCalibration,
    attribute_diffs,
    best_cosine,
    calibration_path,
    pair_features,
)
from backend.domain.payload import normalise_filters
from backend.domain.photo_index import PhotoIndex
from backend.domain.photo_search import (
    PhotoCandidate,
    PhotoQuery,
    best_per_product,
    decode_query_photo,
    describe_query,
    search_photo,
    signals,
)
from backend.domain.ports import ProductReader, VectorEncoder
from backend.domain.types import Filters, Product
from backend.domain.vectors import ScoredPoint, VectorStore
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
class Evidence:
    """What the listing says about one catalog product: the best cosine of the listing's
    photo views with the product's images (None without a photo), of the texts, and the
    photo's geometric verification against the product's local features."""

    image_sim: float | None
    text_sim: float
    verification: dict[str, float] = field(default_factory=lambda: dict(NO_VERIFICATION))


@dataclass
class ListingEvidence:
    """The candidates of one listing, best source first, and the evidence for each."""

    products: list[Product]
    by_product: dict[str, Evidence]
    found: set[str] = field(default_factory=set)  # ids the photo or the text proposed

    def features(self, product_id: str, diffs: list[AttributeDiff]) -> np.ndarray:
        """The verdict features of (listing, product), exactly as matching scores them: the
        image margin is taken over the other candidates of this listing."""
        ev = self.by_product[product_id]
        others = [e.image_sim for pid, e in self.by_product.items()
                  if pid != product_id and e.image_sim is not None]
        rivals = [e.verification["probability"] for pid, e in self.by_product.items()
                  if pid != product_id]
        with_photo = ev.image_sim is not None
        return pair_features(ev.image_sim, ev.text_sim, diffs,
                             max(others) if others else None, ev.verification,
                             max(rivals) if rivals and with_photo else None)


@dataclass
class _PhotoViews:
    image: Image
    plain: list[np.ndarray]  # the image vector of each view (the scorer's dense_cos)
    search: list[np.ndarray]  # the vector searched with ("fused" when the model has one)


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
        photo: PhotoIndex | None = None,
    ) -> None:
        self._catalog = catalog
        self._vectors = vectors
        self._encoder = encoder
        self._collection = collection
        self._settings = settings
        self._data_dir = data_dir
        self._photo = photo
        self._calibration: MatchCalibration | None = None
        self._loaded_stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the file read

    def calibration(self) -> MatchCalibration:
        """The calibration of the current model version. The file is read again when it was
        replaced (`prodsearch calibrate` writes it atomically while the server runs); until
        then, and whenever a new one cannot be read, the one in use stays."""
        version = self._encoder.model_version
        path = calibration_path(self._data_dir, version)
        try:
            info = path.stat()
            stamp: tuple[int, int] | None = (info.st_mtime_ns, info.st_size)
        except OSError:
            stamp = None
        current = self._calibration
        if (current is not None and current.model_version == version
                and (stamp is None or stamp == self._loaded_stamp)):
            return current
        if stamp is None:
            raise NotReady(f"matching is not calibrated for model {version}: run "
                           "`prodsearch calibrate`")
        try:
            loaded = MatchCalibration.load(path)
        except (OSError, ValueError, KeyError) as exc:
            if current is not None and current.model_version == version:
                log.warning("match calibration %s unreadable (%s): keeping the one in use",
                            path, exc)
                return current
            raise NotReady(f"{exc}: run `prodsearch calibrate`") from exc
        self._calibration, self._loaded_stamp = loaded, stamp
        return loaded

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
        # A storefront key matches only against what it may see (listed, or its own).
        principal = current_principal()
        flt = normalise_filters(principal.scope_filters(filters or Filters()))
        evidence = await self.gather_evidence(images, listing.text(), flt, principal.can_see)
        results = []
        for product in evidence.products:
            diffs = attribute_diffs(listing.attributes(), catalog_attributes(product))
            probs = calibration.probabilities(evidence.features(product.product_id, diffs))[0]
            best = int(np.argmax(probs))
            ev = evidence.by_product[product.product_id]
            results.append(MatchResult(
                product=product,
                verdict=VERDICTS[best],
                probability=float(probs[best]),
                similarity=ev.image_sim if ev.image_sim is not None else ev.text_sim,
                diff=diffs,
            ))
        # Best first: the likeliest to be the same product, then the likeliest variants.
        results.sort(key=lambda r: (VERDICTS.index(r.verdict), -r.probability))
        return results[: top_k or 5]

    async def gather_evidence(self, images: list[Image], text: str, flt: Filters,
                              can_see: Callable[[Product], bool] | None = None,
                              include: Sequence[str] = ()) -> ListingEvidence:
        """Candidates from the photo (the photo search's ranked, geometrically verified
        candidates; the dense image vectors alone without local features) and from the
        text, plus `include` (calibration asks for its labelled product), each with its
        evidence. Every candidate the photo search did not verify is verified here, so a
        product found by its title alone is still checked against the photo."""
        collection = await asyncio.to_thread(self._vectors.resolve, self._collection)
        photos = [await self._encode_photo(image) for image in images]
        text_vec = (await self._encoder.encode(None, text))["text"] if text.strip() else None
        queries: list[PhotoQuery] = []
        checked: list[dict[str, PhotoCandidate]] = []
        ids: list[str] = []
        for views in photos:
            if self._photo is not None:
                query, found = await self._photo_candidates(collection, views, flt)
                queries.append(query)
                checked.append({c.product_id: c for c in reversed(found)
                                if c.verification is not None})
                ranked = best_per_product(found)[:_CANDIDATES_PER_MODALITY]
                ids += [c.product_id for c in ranked]
            else:
                ids += await asyncio.to_thread(self._dense_candidates, collection, views, flt)
        if text_vec is not None:
            points = await asyncio.to_thread(self._vectors.search, collection, "text",
                                             text_vec, flt, _CANDIDATES_PER_MODALITY)
            ids += [p.payload.product_id for p in points]
        proposed = set(ids)
        ids = list(dict.fromkeys([*ids, *include]))
        products = await asyncio.to_thread(self._catalog.get_products, ids)
        visible = [products[pid] for pid in ids if pid in products
                   and (can_see is None or pid in include or can_see(products[pid]))]
        all_views = [v for views in photos for v in views.plain]
        by_product: dict[str, Evidence] = {}
        for product in visible:
            by_product[product.product_id] = await asyncio.to_thread(
                self._similarities, collection, product.product_id, all_views, text_vec)
        for query, done in zip(queries, checked, strict=True):
            missing = [p.product_id for p in visible if p.product_id not in done]
            if missing:
                done.update(await self._verify(collection, query, missing, all_views))
            for pid, ev in by_product.items():
                candidate = done.get(pid)
                if candidate is not None and candidate.probability >= ev.verification[
                        "probability"]:
                    ev.verification = _verification_of(candidate)
        return ListingEvidence(visible, by_product, proposed)

    async def _encode_photo(self, image: Image) -> _PhotoViews:
        views = await run_heavy(query_views, image)
        encoded = await asyncio.gather(*(self._encoder.encode(v, None) for v in views))
        name = "fused" if "fused" in self._encoder.dims else "image"
        return _PhotoViews(image, [e["image"] for e in encoded],
                           [e.get(name, e["image"]) for e in encoded])

    async def _photo_candidates(self, collection: str, views: _PhotoViews, flt: Filters
                                ) -> tuple[PhotoQuery, list[PhotoCandidate]]:
        assert self._photo is not None
        settings = self._settings
        query = await run_heavy(describe_query, self._photo, views.image)
        name = "fused" if "fused" in self._encoder.dims else "image"
        found = await search_photo(
            self._photo, self._vectors, collection, query, views.search, None, flt,
            _CANDIDATES_PER_MODALITY, settings.verify_top, views.plain, name)
        return query, found

    async def _verify(self, collection: str, query: PhotoQuery, product_ids: list[str],
                      views: list[np.ndarray]) -> dict[str, PhotoCandidate]:
        """Verify the photo against products the photo search did not check (found by the
        title, or below its verification depth); each product's best image counts."""
        assert self._photo is not None
        points = await asyncio.to_thread(self._vectors.product_payloads, collection,
                                         product_ids)
        candidates = []
        for rank, (point_id, payload) in enumerate(points):
            found = await asyncio.to_thread(self._vectors.get_vectors, collection,
                                            payload.product_id, "image")
            cos = [float(np.max(np.stack(views) @ v)) for pos, v in found
                   if pos == payload.position and views]
            candidates.append(PhotoCandidate(ScoredPoint(point_id, 0.0, payload), rank,
                                             dense_cos=cos[0] if cos else None))
        checked = await asyncio.to_thread(self._verify_pairwise, collection, query, candidates)
        best: dict[str, PhotoCandidate] = {}
        for c in checked:  # best probability first
            best.setdefault(c.product_id, c)
        return best

    def _verify_pairwise(self, collection: str, query: PhotoQuery,
                         candidates: list[PhotoCandidate]) -> list[PhotoCandidate]:
        """Candidates the descriptor vote did not bring: matched against the photo one image
        at a time (their ratio-test matches stand in for votes), scored, best first."""
        from encoders.local_features import verify

        photo = self._photo
        assert photo is not None

        def check(c: PhotoCandidate) -> None:
            stored = photo.load(collection, c.product_id, c.point.id)
            if stored is not None and len(query.features):
                c.verification = verify(query.features, stored, query_root=query.root)
                c.votes = c.verification.matches
            c.parts = signals(c, len(query.features))
            c.probability = float(photo.scorer.score(c.parts))

        photo.map(check, candidates)
        return sorted(candidates, key=lambda c: -c.probability)

    def image_vectors(self, product_ids: list[str]) -> np.ndarray:
        """The first stored image vector of each product (zeros where none is indexed)."""
        collection = self._vectors.resolve(self._collection)
        out = np.zeros((len(product_ids), self._encoder.dims["image"]), dtype=np.float32)
        for row, pid in enumerate(product_ids):
            found = self._vectors.get_vectors(collection, pid, "image")
            if found:
                out[row] = min(found, key=lambda f: f[0])[1]
        return out

    def _dense_candidates(self, collection: str, views: _PhotoViews, flt: Filters
                          ) -> list[str]:
        ids: list[str] = []
        for vector in views.plain:
            for point in self._vectors.search(collection, "image", vector, flt,
                                              _CANDIDATES_PER_MODALITY):
                ids.append(point.payload.product_id)
        return list(dict.fromkeys(ids))

    def _similarities(self, collection: str, product_id: str, views: list[np.ndarray],
                      text: np.ndarray | None) -> Evidence:
        image_sim = None
        if views:
            found = self._vectors.get_vectors(collection, product_id, "image")
            if found:
                image_sim = best_cosine(np.stack(views), np.stack([v for _, v in found]))
        text_sim = 0.0
        if text is not None:
            texts = self._vectors.get_vectors(collection, product_id, "text")
            if texts:
                text_sim = best_cosine(text, texts[0][1])
        return Evidence(image_sim, text_sim)


def _verification_of(candidate: PhotoCandidate) -> dict[str, float]:
    ver = candidate.verification
    return {"verified": 1.0 if candidate.box is not None else 0.0,
            "inliers": float(ver.inliers) if ver is not None else 0.0,
            "probability": float(candidate.probability),
            "votes": float(candidate.votes),
            "vote_share": float(candidate.parts.get("vote_share", 0.0))}
