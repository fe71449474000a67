"""Every catalog product verified on a shelf photo, with its boxes (one per facing).

A product counts only when geometric verification against one of its catalog images passes
the scorer's verified threshold, so a shelf of three items gives those three SKUs and not
their look-alikes. The whole photo is searched and verified, and so is each item region that
stands out from the background, as a photo of its own: a region's features are extracted
at the query resolution, so a small item gets the keypoints it needs (measured: items that
failed verification on the whole shelf pass on their region). More copies of a product are
found by verifying again on the photo's keypoints outside the boxes found so far; two
products claiming the same region keep the more probable one.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from backend.config import SearchSettings
from backend.domain.photo_index import PhotoIndex
from backend.domain.photo_search import (
    Box,
    PhotoCandidate,
    PhotoQuery,
    decode_query_photo,
    describe_query,
    overlap_of_smaller,
    search_photo,
    signals,
    upload_scale,
)
from backend.domain.ports import VectorEncoder
from backend.domain.types import Filters
from backend.domain.vectors import VectorStore
from encoders.localise import isolate_box, item_boxes
from encoders.priority import run_heavy

if TYPE_CHECKING:
    from encoders.local_features import LocalFeatures

# Two products whose boxes share this much of the smaller one are one item on the shelf.
MAX_SHARED = 0.5
MAX_FACINGS = 12
# Verified candidates per shelf photo: enough for a full shelf, bounded per query.
MIN_VERIFY = 48
# Verified candidates per item region (one item each).
REGION_VERIFY = 8
_MAX_REGIONS = 8


@dataclass
class ShelfItem:
    product_id: str
    probability: float
    box: Box  # the best facing, in uploaded-image pixels
    boxes: list[Box]  # every facing


def outside(features: LocalFeatures, boxes: list[Box]) -> LocalFeatures:
    """The query's keypoints (and descriptors) outside every box."""
    from encoders.local_features import LocalFeatures

    keep = np.ones(len(features.keypoints), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        xs, ys = features.keypoints[:, 0], features.keypoints[:, 1]
        keep &= ~((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1))
    return LocalFeatures(features.keypoints[keep], features.descriptors[keep], features.size)


def more_facings(photo: PhotoIndex, collection: str, query: LocalFeatures,
                 candidate: PhotoCandidate, first: Box) -> list[Box]:
    """Boxes of further copies of the candidate's image, in query-feature pixels."""
    from encoders.local_features import verify

    stored = photo.load(collection, candidate.product_id, candidate.point.id)
    boxes = [first]
    if stored is None:
        return boxes
    while len(boxes) < MAX_FACINGS:
        rest = outside(query, boxes)
        ver = verify(rest, stored)
        if ver.box is None or not photo.scorer.verified(signals(candidate, ver)):
            break
        if any(overlap_of_smaller(ver.box, b) > MAX_SHARED for b in boxes):
            break
        boxes.append(ver.box)
    return boxes


def select_verified(photo: PhotoIndex, collection: str, query: PhotoQuery,
                    candidates: list[PhotoCandidate], top_k: int) -> list[ShelfItem]:
    threshold = photo.scorer.threshold
    chosen: list[tuple[PhotoCandidate, Box]] = []
    seen: set[str] = set()
    # Candidates come best probability first: a look-alike verified on the same region as a
    # better match is the same shelf item, not another one.
    for c in candidates:
        if not c.verified(threshold) or c.box is None or c.product_id in seen:
            continue
        if any(overlap_of_smaller(c.box, box) > MAX_SHARED for _, box in chosen):
            continue
        seen.add(c.product_id)
        chosen.append((c, c.box))
        if len(chosen) == top_k:
            break
    items = []
    for c, box in chosen:
        boxes = more_facings(photo, collection, query.features, c, box)
        uploaded = [b for b in (query.to_upload(b) for b in boxes) if b is not None]
        items.append(ShelfItem(c.product_id, c.probability, uploaded[0], uploaded))
    return items


def _shifted(candidates: list[PhotoCandidate], origin: tuple[int, int]) -> None:
    """Boxes found in a region's crop -> pixels of the whole (decoded) photo."""
    ox, oy = origin
    for c in candidates:
        if c.verification is not None and c.verification.box is not None:
            x0, y0, x1, y1 = c.verification.box
            c.verification = dataclasses.replace(
                c.verification, box=(x0 + ox, y0 + oy, x1 + ox, y1 + oy))


async def verified_on_shelf(photo: PhotoIndex, vectors: VectorStore, encoder: VectorEncoder,
                            alias: str, settings: SearchSettings, data: bytes, filters: Filters,
                            top_k: int) -> list[ShelfItem]:
    image = await decode_query_photo(data, settings)
    described = run_heavy(describe_query, photo, image, upload_scale(data, image))
    boxes = await run_heavy(item_boxes, image, _MAX_REGIONS)
    views = [image, *(isolate_box(image, box) for box in boxes)]
    query, *encoded = await asyncio.gather(
        described, *(encoder.encode(view, None) for view in views))
    name = "fused" if "fused" in encoder.dims else "image"
    collection = await asyncio.to_thread(vectors.resolve, alias)
    verify_top = max(settings.verify_top, MIN_VERIFY)
    candidates = await search_photo(photo, vectors, collection, query,
                                    [v[name] for v in encoded], None, filters, verify_top,
                                    verify_top, [v["image"] for v in encoded], name)
    for box, region_vectors in zip(boxes, encoded[1:], strict=True):
        crop = image.crop(box)
        region = await run_heavy(describe_query, photo, crop)
        found = await search_photo(photo, vectors, collection, region,
                                   [region_vectors[name]], None, filters, REGION_VERIFY,
                                   REGION_VERIFY, [region_vectors["image"]], name)
        _shifted(found, (box[0], box[1]))
        candidates.extend(found)
    candidates.sort(key=lambda c: (-c.probability, c.fused_rank))
    return await asyncio.to_thread(select_verified, photo, collection, query, candidates,
                                   top_k)
