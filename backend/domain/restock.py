"""FindRestockMatches: a warehouse photo of a shelf -> the catalog SKUs it shows, each with
its box, score and stock in that warehouse (low-stock flagged).

With local features (the default) a product is reported only when it is verified on the
photo: the photo's descriptors vote over the descriptor index (as photo search does), each
of the most voted images is verified geometrically on its votes' correspondences, and every
product verified with at least the scorer's `restock_min_inliers` inliers is reported with
its box (`backend/domain/photo_verify.py`). Several copies of one product (facings) are
found by verifying again on its votes outside the boxes found so far.

Without local features, items are proposed from the photo itself: separate regions that
stand out from the background (each isolated on white, like a catalog image), plus sliding
windows for items that do not stand out. Each proposal is matched; each product keeps its
best proposal; overlapping proposals keep only their best product."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from PIL.Image import Image

from backend.config import SearchSettings
from backend.domain.photo_index import PhotoIndex
from backend.domain.photo_search import Box, decode_query_photo, overlap_of_smaller
from backend.domain.photo_verify import verified_on_shelf
from backend.domain.ports import ProductReader, VectorEncoder
from backend.domain.tenants import tenant_name
from backend.domain.types import Filters, Product, StockLevel
from backend.domain.vectors import VectorStore
from backend.errors import InvalidInput
from backend.security import Role
from backend.security import current as current_principal
from encoders.image import crop_boxes
from encoders.localise import isolate_box, item_boxes
from encoders.priority import run_heavy

# Cosine below which a proposal is background, not a catalog item (pretrained backbone).
MIN_SCORE = 0.5
# A proposal this far below the best match of the photo is a partial view, not another item.
MAX_GAP = 0.4
MAX_OVERLAP = 0.3
_WINDOW_SCALES = (0.9, 0.6)
_MAX_TOP_K = 20


@dataclass
class RestockMatch:
    product: Product
    score: float
    box: Box
    stock: list[StockLevel]
    low_stock: bool
    facings: int = 1
    facing_boxes: list[Box] = field(default_factory=list)


def proposals(image: Image) -> list[tuple[Box, Image]]:
    """Candidate item regions with the image each is encoded from: separate foreground
    regions isolated on white (as catalog images are), and plain sliding windows for items
    that do not stand out from the background."""
    out: list[tuple[Box, Image]] = [(box, isolate_box(image, box)) for box in item_boxes(image)]
    out += [(box, image.crop(box))
            for box in crop_boxes(image.width, image.height, _WINDOW_SCALES, 0.5)]
    return out


def select(candidates: list[tuple[float, str, Box]], top_k: int) -> list[tuple[float, str, Box]]:
    """Best proposal per product, then greedy suppression of overlapping boxes."""
    best: dict[str, tuple[float, str, Box]] = {}
    for score, product_id, box in candidates:
        if product_id not in best or score > best[product_id][0]:
            best[product_id] = (score, product_id, box)
    ranked = sorted(best.values(), key=lambda c: -c[0])
    if not ranked:
        return []
    floor = max(MIN_SCORE, ranked[0][0] - MAX_GAP)
    chosen: list[tuple[float, str, Box]] = []
    for score, product_id, box in ranked:
        if score < floor:
            break
        if all(overlap_of_smaller(box, c[2]) < MAX_OVERLAP for c in chosen):
            chosen.append((score, product_id, box))
        if len(chosen) == top_k:
            break
    return chosen


class RestockService:
    def __init__(
        self,
        catalog: ProductReader,
        vectors: VectorStore,
        encoder: VectorEncoder,
        collection: str,
        settings: SearchSettings,
        photo: PhotoIndex | None = None,
    ) -> None:
        self._photo = photo
        self._catalog = catalog
        self._vectors = vectors
        self._encoder = encoder
        self._collection = collection
        self._settings = settings

    async def find(self, photo: bytes, warehouse: str, bin_: str = "", top_k: int = 5,
                   filters: Filters | None = None) -> list[RestockMatch]:
        if not photo:
            raise InvalidInput("a restock query needs a photo")
        if not warehouse.strip():
            raise InvalidInput("a restock query needs a warehouse")
        warehouse = tenant_name(warehouse, "warehouse")
        principal = current_principal()
        if principal.role is Role.WAREHOUSE:
            principal.require_warehouse(warehouse)
        top_k = top_k or 5
        if not 1 <= top_k <= _MAX_TOP_K:
            raise InvalidInput("top_k must be between 1 and 20")
        if self._photo is not None:
            found = await verified_on_shelf(
                self._photo, self._vectors, self._encoder, self._collection, self._settings,
                photo, filters or Filters(), top_k)
            chosen = [(f.probability, f.product_id, f.box) for f in found]
            boxes = {f.product_id: f.boxes for f in found}
            return (await self._matches(chosen, boxes, warehouse, bin_))[:top_k]
        # Full size: small items on a shelf need the pixels the draft would drop.
        image = await decode_query_photo(photo, self._settings, draft=False)
        regions = await run_heavy(proposals, image)
        encoded = await asyncio.gather(*(self._encoder.encode(crop, None) for _, crop in regions))
        collection = await asyncio.to_thread(self._vectors.resolve, self._collection)
        flt = filters or Filters()

        def match_all() -> list[tuple[float, str, Box]]:
            found = []
            for (box, _), vectors in zip(regions, encoded, strict=True):
                for point in self._vectors.search(collection, "image", vectors["image"], flt, 3):
                    found.append((point.score, point.payload.product_id, box))
            return found

        # Select more than asked: products the key may not see are dropped, and near ties are
        # ordered by what must be restocked, before the cut to top_k.
        chosen = select(await asyncio.to_thread(match_all), _MAX_TOP_K)
        matches = await self._matches(chosen, {c[1]: [c[2]] for c in chosen}, warehouse, bin_)
        return matches[:top_k]

    async def _matches(self, chosen: list[tuple[float, str, Box]], boxes: dict[str, list[Box]],
                       warehouse: str, bin_: str) -> list[RestockMatch]:
        principal = current_principal()
        products = await asyncio.to_thread(self._catalog.get_products, [c[1] for c in chosen])
        matches = []
        for score, product_id, box in chosen:
            # can_see: a warehouse key gets listed products and the unlisted ones it holds.
            if product_id not in products or not principal.can_see(products[product_id]):
                continue
            product = products[product_id]
            stock = [s for s in product.inventory
                     if s.warehouse == warehouse and (not bin_ or s.bin == bin_)]
            facing_boxes = boxes.get(product_id) or [box]
            matches.append(RestockMatch(product, score, box, stock,
                                        low_stock=not stock or any(s.low for s in stock),
                                        facings=len(facing_boxes), facing_boxes=facing_boxes))
        # Highest score first; among (near) ties, what must be restocked comes first.
        matches.sort(key=lambda m: (-round(m.score, 2), not m.low_stock))
        return matches

