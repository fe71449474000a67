"""The photo pipeline shared by search and restock: candidates from the dense image vectors of
the photo's views and from its visual words (fused inside the vector store), geometric
verification of the best candidates against their stored local features, and one calibrated
probability per candidate from PhotoScorer.

Verification runs on the feature threads, off the event loop; how many candidates are
verified is bounded (`SearchSettings.verify_top`), so a query costs a fixed amount of work
whatever the catalog size.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image as PILImage
from PIL.Image import Image

from backend.config import SearchSettings
from backend.domain.photo_index import WORDS, PhotoIndex
from backend.domain.types import Filters
from backend.domain.vectors import Prefetch, ScoredPoint, SparseVector, VectorStore
from encoders.preprocess import decode_image
from encoders.priority import run_heavy

if TYPE_CHECKING:
    from encoders.local_features import LocalFeatures, Verification

Box = tuple[int, int, int, int]


def overlap_of_smaller(a: Box, b: Box) -> float:
    """Intersection over the smaller box: a window around an item and the item's own box,
    or two verified boxes of one shelf item."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


async def decode_query_photo(data: bytes, settings: SearchSettings, *, draft: bool = True
                             ) -> Image:
    """A query photo decoded under the search limits, off the event loop. `draft` lets a
    large JPEG decode at a reduced scale (`query_image_draft_px`)."""
    return await run_heavy(
        decode_image, data, max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        draft_px=settings.query_image_draft_px if draft else 0,
        max_decode_pixels=settings.max_decode_pixels)

# Each candidate list reaches this deep before fusion.
PREFETCH_DEPTH = 100


@dataclass
class PhotoCandidate:
    point: ScoredPoint
    fused_rank: int
    sparse_rank: int | None = None  # rank in the visual-word list alone (None: not in it)
    dense_cos: float | None = None  # best cosine of the photo's views with this image
    verification: Verification | None = None
    probability: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def product_id(self) -> str:
        return self.point.payload.product_id

    @property
    def box(self) -> Box | None:
        return self.verification.box if self.verification is not None else None

    def verified(self, threshold: float) -> bool:
        """Geometrically verified (a box) and probable enough to count as found."""
        return self.box is not None and self.probability >= threshold


@dataclass
class PhotoQuery:
    """A decoded query photo with its local features and visual words."""

    image: Image
    features: LocalFeatures
    words: SparseVector | None
    scale: tuple[float, float]  # uploaded pixels per decoded pixel (x, y)
    root: np.ndarray  # RootSIFT descriptors, computed once for every verification

    def to_upload(self, box: Box | None) -> Box | None:
        """A box in decoded-image pixels -> pixels of the uploaded image."""
        if box is None:
            return None
        sx, sy = self.scale
        return (round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy))


def upload_scale(data: bytes, decoded: Image) -> tuple[float, float]:
    """Decoding may reduce a JPEG (draft mode); boxes are reported in the upload's pixels."""
    with PILImage.open(io.BytesIO(data)) as header:
        width, height = header.size
        # EXIF orientation 5-8 swaps the sides (decode applied it).
        if header.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            width, height = height, width
    return width / decoded.width, height / decoded.height


def describe_query(photo: PhotoIndex, image: Image, scale: tuple[float, float] = (1.0, 1.0)
                   ) -> PhotoQuery:
    """Local features and visual words of a decoded photo; `scale` maps its boxes back to the
    upload (`upload_scale`; the default for a crop whose boxes are shifted, not reported)."""
    from encoders.local_features import root_sift

    features = photo.extractor.extract(image, query=True)
    return PhotoQuery(image, features, photo.words(features), scale,
                      root_sift(features.descriptors))


def prefetches(view_vectors: list[np.ndarray], words: SparseVector | None,
               text_vector: np.ndarray | None, image_vector: str = "image",
               depth: int = PREFETCH_DEPTH) -> list[Prefetch]:
    """One candidate list per view of the photo, one for its visual words and one for the
    query's text when there is one; the store fuses them by rank."""
    out = [Prefetch(image_vector, v, depth) for v in view_vectors]
    if words is not None:
        out.append(Prefetch(WORDS, words, depth))
    if text_vector is not None:
        out.append(Prefetch("text", text_vector, depth))
    return out


def signals(candidate: PhotoCandidate, verification: Verification | None = None
            ) -> dict[str, float]:
    """The scorer's signals (encoders.local_features documents them); a missing one takes
    the scorer's default. The fused rank is reported too (not scored)."""
    parts: dict[str, float] = {"fused_rank": float(candidate.fused_rank)}
    if candidate.sparse_rank is not None:
        parts["sparse_rank"] = float(candidate.sparse_rank)
    if candidate.dense_cos is not None:
        parts["dense_cos"] = candidate.dense_cos
    ver = verification if verification is not None else candidate.verification
    if ver is not None:
        parts["inliers"] = float(ver.inliers)
        parts["inlier_ratio"] = float(ver.inlier_ratio)
    return parts


def verify_candidates(photo: PhotoIndex, collection: str, query: PhotoQuery,
                      candidates: list[PhotoCandidate], top: int, first: int | None = None
                      ) -> list[PhotoCandidate]:
    """Verify up to `top` candidates geometrically (in parallel on the feature threads) and
    score every one; best probability first. With `first`, the first `first` candidates are
    verified, and the rest of the `top` only when none of them was verified geometrically
    (one product photo: once it is verified, look-alikes further down cannot outrank it on
    fewer inliers). Candidates not verified, or whose features are missing,
    are scored without inliers (the scorer's default for a failed check)."""
    from encoders.local_features import verify

    def check(candidate: PhotoCandidate) -> None:
        stored = photo.load(collection, candidate.product_id, candidate.point.id)
        if stored is not None:
            candidate.verification = verify(query.features, stored, query_root=query.root)
        candidate.parts = signals(candidate)
        candidate.probability = float(photo.scorer.score(candidate.parts))

    stages = [candidates[:top]] if first is None or first >= top else \
        [candidates[:first], candidates[first:top]]
    for n, stage in enumerate(stages):
        if len(query.features) == 0:
            break
        if n and any(c.box is not None for c in stages[0]):
            break
        photo.map(check, stage)
    for candidate in candidates:
        if candidate.verification is None:
            candidate.parts = signals(candidate)
            candidate.probability = float(photo.scorer.score(candidate.parts))
    # Geometrically verified candidates (a box) first, by probability; the rest by their best
    # cosine over the photo's views, as the dense-only path ranks them: a product photo of a
    # flat item with too few keypoints to verify is still found by its dense vector. (The
    # scorer's verified threshold, set for restock's precision, decides what restock
    # reports, not this order.)
    candidates.sort(key=lambda c: (0, -c.probability, 0) if c.box is not None
                    else (1, -(c.dense_cos if c.dense_cos is not None else -1.0),
                          c.fused_rank))
    return candidates


def _dense_cos(point: ScoredPoint, view_vectors: list[np.ndarray]) -> float | None:
    vector = point.vectors.get("image")
    if vector is None or not view_vectors:
        return None
    return max(float(np.dot(vector, v)) for v in view_vectors)


async def search_photo(photo: PhotoIndex, vectors: VectorStore, collection: str,
                       query: PhotoQuery, view_vectors: list[np.ndarray],
                       text_vector: np.ndarray | None, filters: Filters, limit: int,
                       verify_top: int, image_vectors: list[np.ndarray] | None = None,
                       image_vector: str = "image", verify_first: int | None = None
                       ) -> list[PhotoCandidate]:
    """Fused candidates (at least `verify_top` points), verified and scored.

    `view_vectors` search (the `image_vector` of each view); `image_vectors` (default: the
    same) are the views' plain image vectors the scorer's dense_cos compares with. The
    visual-word list is also asked for on its own, for the scorer's sparse_rank."""
    stages = prefetches(view_vectors, query.words, text_vector, image_vector)
    fused = asyncio.to_thread(vectors.search_fused, collection, stages, filters,
                              max(limit, verify_top), ["image"])
    if query.words is not None:
        sparse = asyncio.to_thread(vectors.search_fused, collection,
                                   [Prefetch(WORDS, query.words, PREFETCH_DEPTH)], filters,
                                   PREFETCH_DEPTH)
        points, by_words = await asyncio.gather(fused, sparse)
    else:
        points, by_words = await fused, []
    sparse_ranks = {p.id: rank for rank, p in enumerate(by_words)}
    dense = image_vectors if image_vectors is not None else view_vectors
    candidates = [PhotoCandidate(p, rank, sparse_ranks.get(p.id), _dense_cos(p, dense))
                  for rank, p in enumerate(points)]
    return await asyncio.to_thread(verify_candidates, photo, collection, query, candidates,
                                   verify_top, verify_first)


def best_per_product(candidates: list[PhotoCandidate]) -> list[PhotoCandidate]:
    seen: set[str] = set()
    out = []
    for c in candidates:
        if c.product_id not in seen:
            seen.add(c.product_id)
            out.append(c)
    return out
