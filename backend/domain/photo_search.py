"""The photo pipeline shared by search, restock and matching: candidates by nearest-descriptor
vote over the collection's descriptor index (every catalog RootSIFT descriptor; see
`encoders.descriptor_index`) together with the dense image vectors of the photo's views
(and the text, if any) fused inside the vector store; geometric verification of the most
voted candidates on their votes' own correspondences; one calibrated probability per
candidate from PhotoScorer over votes, vote share, inliers and dense cosine. Verification is
not demanded: a well-voted flat item that RANSAC cannot fit still ranks by its votes.

Filters: the store's candidates are filtered inside the store; voted candidates are checked
against the store (their points must exist, payloads read back) and the same filter
evaluated on those payloads, so a vote never returns a product the filter excludes or a
point that is gone. (A very narrow filter can leave few voted candidates: the store's
filtered candidates still rank.)

The visual-word sparse vector is still written to every point (no schema change) but no
longer searched: the vote found the photographed item among its top 30 candidates far more
often (README "Photo search on local features").

Verification runs on the feature threads, off the event loop; how many candidates are voted
on and verified is bounded, so a query costs a fixed amount of work whatever the catalog
size, apart from the index's probed lists.
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
from backend.domain.photo_index import PhotoIndex
from backend.domain.types import Filters
from backend.domain.vectors import Prefetch, ScoredPoint, VectorStore
from encoders.preprocess import decode_image
from encoders.priority import run_heavy

if TYPE_CHECKING:
    from encoders.descriptor_index import Votes
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
# The most voted points a query considers (and at most how many it reads from the store).
VOTE_DEPTH = 40


@dataclass
class PhotoCandidate:
    point: ScoredPoint
    fused_rank: int  # rank in the store's dense (+ text) list; VOTE_DEPTH+ for vote-only
    votes: int = 0  # query descriptors voting for this image
    dense_cos: float | None = None  # best cosine of the photo's views with this image
    verification: Verification | None = None
    probability: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)
    # The votes' correspondences: query keypoint rows, catalog keypoints (catalog pixels).
    matches: tuple[np.ndarray, np.ndarray] | None = None
    catalog_size: tuple[int, int] = (0, 0)

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
    """A decoded query photo with its local features."""

    image: Image
    features: LocalFeatures
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
    """Local features of a decoded photo; `scale` maps its boxes back to the
    upload (`upload_scale`; the default for a crop whose boxes are shifted, not reported)."""
    from encoders.local_features import root_sift

    features = photo.extractor.extract(image, query=True)
    return PhotoQuery(image, features, scale,
                      root_sift(features.descriptors))


def prefetches(view_vectors: list[np.ndarray], text_vector: np.ndarray | None,
               image_vector: str = "image", depth: int = PREFETCH_DEPTH) -> list[Prefetch]:
    """One candidate list per view of the photo and one for the query's text when there is
    one; the store fuses them by rank."""
    out = [Prefetch(image_vector, v, depth) for v in view_vectors]
    if text_vector is not None:
        out.append(Prefetch("text", text_vector, depth))
    return out


def signals(candidate: PhotoCandidate, passed: int,
            verification: Verification | None = None) -> dict[str, float]:
    """The scorer's signals (encoders.local_features documents them); a missing one takes
    the scorer's default. The store's fused rank is reported too (not scored)."""
    from encoders.photo_match import vote_signals

    ver = verification if verification is not None else candidate.verification
    parts = vote_signals(candidate.votes, passed, ver, candidate.dense_cos)
    parts["fused_rank"] = float(candidate.fused_rank)
    return parts


def verify_candidates(photo: PhotoIndex, query: PhotoQuery, candidates: list[PhotoCandidate],
                      passed: int, top: int) -> list[PhotoCandidate]:
    """Verify the `top` most voted candidates on their votes' correspondences (in parallel
    on the feature threads), score every candidate; best probability first."""
    from encoders.local_features import verify_matches

    def check(candidate: PhotoCandidate) -> None:
        if candidate.matches is not None:
            rows, points = candidate.matches
            candidate.verification = verify_matches(
                query.features.keypoints[rows], query.features.size, points,
                candidate.catalog_size)

    voted = sorted((c for c in candidates if c.votes), key=lambda c: -c.votes)[:top]
    photo.map(check, voted)
    for candidate in candidates:
        candidate.parts = signals(candidate, passed)
        candidate.probability = float(photo.scorer.score(candidate.parts))
    candidates.sort(key=lambda c: (-c.probability, -c.votes, c.fused_rank))
    return candidates


def _dense_cos(point: ScoredPoint, view_vectors: list[np.ndarray]) -> float | None:
    vector = point.vectors.get("image")
    if vector is None or not view_vectors:
        return None
    return max(float(np.dot(vector, v)) for v in view_vectors)


def voted_points(vectors: VectorStore, collection: str, keys: list[str],
                 groups: dict[str, str], filters: Filters) -> dict[str, ScoredPoint]:
    """The voted points that exist in the store and pass the filter, with their payloads
    and image vectors (read back: the descriptor index holds neither)."""
    if not keys:
        return {}
    wanted = set(keys)
    products = list(dict.fromkeys(groups[k] for k in keys))
    out: dict[str, ScoredPoint] = {}
    for pid, payload in vectors.product_payloads(collection, products, filters):
        if pid in wanted:
            out[pid] = ScoredPoint(pid, 0.0, payload)
    for product_id in dict.fromkeys(p.payload.product_id for p in out.values()):
        by_position = dict(vectors.get_vectors(collection, product_id, "image"))
        for point in out.values():
            if point.payload.product_id == product_id and point.payload.position in by_position:
                point.vectors["image"] = by_position[point.payload.position]
    return out


def vote(photo: PhotoIndex, collection: str, query: PhotoQuery) -> Votes:
    from encoders.descriptor_index import Votes

    if len(query.features) == 0:
        return Votes({}, {}, {}, {}, 0)
    return photo.descriptors(collection).vote(query.root, query.features.keypoints)


async def search_photo(photo: PhotoIndex, vectors: VectorStore, collection: str,
                       query: PhotoQuery, view_vectors: list[np.ndarray],
                       text_vector: np.ndarray | None, filters: Filters, limit: int,
                       verify_top: int, image_vectors: list[np.ndarray] | None = None,
                       image_vector: str = "image") -> list[PhotoCandidate]:
    """Ranked candidates of a photo: the store's fused dense (+ text) list, at least
    `limit` deep, and the VOTE_DEPTH most voted points that pass the filter; the
    `verify_top` most voted verified; all scored, best first.

    `view_vectors` search (the `image_vector` of each view); `image_vectors` (default: the
    same) are the views' plain image vectors the scorer's dense_cos compares with."""
    stages = prefetches(view_vectors, text_vector, image_vector)
    fused = asyncio.to_thread(vectors.search_fused, collection, stages, filters, limit,
                              ["image"])
    voting = asyncio.to_thread(vote, photo, collection, query)
    points, votes = await asyncio.gather(fused, voting)
    dense = image_vectors if image_vectors is not None else view_vectors
    known = {p.id for p in points}
    top_voted = [k for k, _ in votes.ranked()[:VOTE_DEPTH]]
    extra = await asyncio.to_thread(voted_points, vectors, collection,
                                    [k for k in top_voted if k not in known], votes.groups,
                                    filters)
    candidates = [PhotoCandidate(p, rank) for rank, p in enumerate(points)]
    candidates += [PhotoCandidate(extra[k], len(points) + n)
                   for n, k in enumerate(top_voted) if k in extra]
    for c in candidates:
        c.dense_cos = _dense_cos(c.point, dense)
        c.votes = votes.counts.get(c.point.id, 0)
        if c.votes:
            c.matches = votes.matches[c.point.id]
            c.catalog_size = votes.sizes[c.point.id]
    return await asyncio.to_thread(verify_candidates, photo, query, candidates, votes.passed,
                                   verify_top)


def best_per_product(candidates: list[PhotoCandidate]) -> list[PhotoCandidate]:
    seen: set[str] = set()
    out = []
    for c in candidates:
        if c.product_id not in seen:
            seen.add(c.product_id)
            out.append(c)
    return out
