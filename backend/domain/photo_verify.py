"""Every catalog product verified on a shelf photo, with its boxes (one per facing), on the
same descriptor vote as photo search.

The photo's descriptors vote once over the collection's descriptor index; each of the most
voted images (that exist in the store and pass the filter) is verified on its votes' own
correspondences. A product counts when its verification keeps at least the scorer's
`restock_min_inliers` inliers (calibrated on training-split shelf photos for item recall
against false SKUs per photo; `encoders/checkpoints/README.md`). Two products claiming the
same region keep the one with more inliers; further copies of a product are found by
verifying again on its votes outside the boxes found so far.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

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
    signals,
    upload_scale,
    vote,
    voted_points,
)
from backend.domain.ports import VectorEncoder
from backend.domain.types import Filters
from backend.domain.vectors import VectorStore
from encoders.priority import run_heavy

# Two products whose boxes share this much of the smaller one are one item on the shelf.
MAX_SHARED = 0.5
MAX_FACINGS = 12
# Most voted images verified per shelf photo: enough for a full shelf, bounded per query.
RESTOCK_DEPTH = 48


@dataclass
class ShelfItem:
    product_id: str
    probability: float
    box: Box  # the best facing, in uploaded-image pixels
    boxes: list[Box]  # every facing
    inliers: int = 0


def _inside(points: np.ndarray, box: Box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return ((points[:, 0] >= x0) & (points[:, 0] <= x1)
            & (points[:, 1] >= y0) & (points[:, 1] <= y1))


def more_facings(query: PhotoQuery, candidate: PhotoCandidate, first: Box,
                 min_inliers: int) -> list[Box]:
    """Boxes of further copies of the candidate's image (query-feature pixels): its votes
    whose photo keypoint lies outside every box found so far, verified again."""
    from encoders.local_features import verify_matches

    boxes = [first]
    if candidate.matches is None:
        return boxes
    rows, points = candidate.matches
    photo_points = query.features.keypoints[rows]
    while len(boxes) < MAX_FACINGS:
        keep = np.ones(len(rows), dtype=bool)
        for box in boxes:
            keep &= ~_inside(photo_points, box)
        if keep.sum() < min_inliers:
            break
        ver = verify_matches(photo_points[keep], query.features.size, points[keep],
                             candidate.catalog_size)
        if ver.box is None or ver.inliers < min_inliers:
            break
        if any(overlap_of_smaller(ver.box, b) > MAX_SHARED for b in boxes):
            break
        boxes.append(ver.box)
    return boxes


def select_verified(query: PhotoQuery, candidates: list[PhotoCandidate], top_k: int,
                    min_inliers: int) -> list[ShelfItem]:
    """Most inliers first: a look-alike verified on the same region as a better match is
    the same shelf item, not another one."""
    ranked = sorted((c for c in candidates if c.box is not None and c.verification is not None
                     and c.verification.inliers >= min_inliers),
                    key=lambda c: (-(c.verification.inliers if c.verification else 0),
                                   -c.votes))
    chosen: list[tuple[PhotoCandidate, Box]] = []
    seen: set[str] = set()
    for c in ranked:
        if c.box is None or c.product_id in seen:
            continue
        if any(overlap_of_smaller(c.box, box) > MAX_SHARED for _, box in chosen):
            continue
        seen.add(c.product_id)
        chosen.append((c, c.box))
        if len(chosen) == top_k:
            break
    items = []
    for c, box in chosen:
        boxes = more_facings(query, c, box, min_inliers)
        uploaded = [b for b in (query.to_upload(b) for b in boxes) if b is not None]
        items.append(ShelfItem(c.product_id, c.probability, uploaded[0], uploaded,
                               c.verification.inliers if c.verification else 0))
    return items


def verify_shelf(photo: PhotoIndex, vectors: VectorStore, collection: str, query: PhotoQuery,
                 filters: Filters, top_k: int) -> list[ShelfItem]:
    """The synchronous core (a feature thread): vote, read back, verify, select."""
    from encoders.local_features import verify_matches

    min_inliers = photo.scorer.restock_min_inliers
    votes = vote(photo, collection, query)
    keys = [k for k, n in votes.ranked()[:RESTOCK_DEPTH] if n >= min_inliers]
    points = voted_points(vectors, collection, keys, votes.groups, filters)
    candidates = [PhotoCandidate(points[k], n, votes=votes.counts[k], matches=votes.matches[k],
                                 catalog_size=votes.sizes[k])
                  for n, k in enumerate(keys) if k in points]

    def check(c: PhotoCandidate) -> None:
        assert c.matches is not None
        rows, pts = c.matches
        c.verification = verify_matches(query.features.keypoints[rows], query.features.size,
                                        pts, c.catalog_size)
        c.parts = signals(c, votes.passed)
        c.probability = float(photo.scorer.score(c.parts))

    photo.map(check, candidates)
    return select_verified(query, candidates, top_k, min_inliers)


async def verified_on_shelf(photo: PhotoIndex, vectors: VectorStore, encoder: VectorEncoder,
                            alias: str, settings: SearchSettings, data: bytes, filters: Filters,
                            top_k: int) -> list[ShelfItem]:
    """`encoder` is unused: the vote needs no CNN (kept for the caller's signature)."""
    del encoder
    image = await decode_query_photo(data, settings)
    query = await run_heavy(describe_query, photo, image, upload_scale(data, image))
    collection = await asyncio.to_thread(vectors.resolve, alias)
    return await asyncio.to_thread(verify_shelf, photo, vectors, collection, query, filters,
                                   top_k)


__all__ = ["ShelfItem", "verified_on_shelf", "verify_shelf"]
