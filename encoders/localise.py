"""Query-side localisation: find the product in a photo so that the CNN sees it the way it saw
the catalog image (the item alone on white). No detector weights exist offline, so this uses
the photo's own statistics: the border is background, what differs from it is the item."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

# A pixel is foreground when it differs from the median border colour by more than this
# (RGB distance), or by more than the border's own spread, whichever is larger.
_MIN_DISTANCE = 20.0
_SPREAD_FACTOR = 1.5
_MIN_FOREGROUND = 0.01  # below this fraction of pixels nothing stands out
_MAX_FOREGROUND = 0.97  # above it the "item" is the whole frame: cropping would not help
_GAP = 3  # grid cells bridged when joining foreground regions into one item


def foreground_box(image: Image.Image) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """(left, top, right, bottom) of the item and its pixel mask, or None if nothing stands
    out from the background."""
    return _foreground(image.convert("RGB"))


def _foreground(rgb: Image.Image) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    work = np.asarray(rgb.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32)
    height, width, _ = work.shape
    band = max(2, min(height, width) // 40)
    border = np.concatenate([
        work[:band].reshape(-1, 3), work[-band:].reshape(-1, 3),
        work[:, :band].reshape(-1, 3), work[:, -band:].reshape(-1, 3),
    ])
    background = np.median(border, axis=0)
    spread = float(np.percentile(np.linalg.norm(border - background, axis=1), 95))
    mask = np.linalg.norm(work - background, axis=2) > max(_MIN_DISTANCE, _SPREAD_FACTOR * spread)
    share = float(mask.mean())
    if not _MIN_FOREGROUND <= share <= _MAX_FOREGROUND:
        return None
    ys, xs = np.nonzero(mask)
    # Percentiles rather than min/max: stray noise pixels must not stretch the box.
    top, bottom = (int(v) for v in np.percentile(ys, [0.5, 99.5]))
    left, right = (int(v) for v in np.percentile(xs, [0.5, 99.5]))
    if right - left < 8 or bottom - top < 8:
        return None
    return (left, top, right + 1, bottom + 1), mask


def isolate_item(image: Image.Image, mask_side: int = 0) -> Image.Image | None:
    """The item cropped out of the photo with its background painted white, like a catalog
    image; None when no item stands out.

    `mask_side` > 0: the item is found on a copy at most that many pixels on its longer
    side, and its mask scaled back up to cut the item out of the full photo. Finding it is
    per-pixel work (blur, distances, percentiles): 72-86 ms on a phone-size photo against
    about 11 ms at 320 px (issue #15), while the crop keeps the photo's full detail."""
    rgb = image.convert("RGB")
    width, height = rgb.size
    scale = max(width, height) / mask_side if mask_side > 0 else 1.0
    if scale <= 1.0:
        found = _foreground(rgb)
        if found is None:
            return None
        (left, top, right, bottom), mask = found
        pixels = np.asarray(rgb).copy()
        pixels[~mask] = 255
        return Image.fromarray(pixels[top:bottom, left:right])
    small = rgb.resize((max(1, round(width / scale)), max(1, round(height / scale))),
                       Image.Resampling.BILINEAR, reducing_gap=2.0)
    found = _foreground(small)
    if found is None:
        return None
    (left, top, right, bottom), mask = found
    sx, sy = width / small.width, height / small.height
    box = (int(left * sx), int(top * sy), min(width, int(np.ceil(right * sx))),
           min(height, int(np.ceil(bottom * sy))))
    crop = np.asarray(rgb.crop(box)).copy()
    # The small mask over the box, stretched to the crop's pixels (nearest: a hard edge,
    # as the full-size mask has).
    part = Image.fromarray(mask[top:bottom, left:right].astype(np.uint8) * 255)
    full = np.asarray(part.resize((crop.shape[1], crop.shape[0]), Image.Resampling.NEAREST)) > 0
    crop[~full] = 255
    return Image.fromarray(crop)


# Query photos are searched for their item on a copy this size (see isolate_item).
QUERY_MASK_SIDE = 320


def query_views(image: Image.Image, mask_side: int = QUERY_MASK_SIDE) -> list[Image.Image]:
    """The views of a query photo to search with: the whole photo, plus the isolated item when
    one stands out (found on a `mask_side` copy; 0 = on the photo itself). Search keeps each
    catalog item's best score over the views."""
    item = isolate_item(image, mask_side)
    return [image] if item is None else [image, item]


def item_boxes(image: Image.Image, max_items: int = 8, grid: int = 96
               ) -> list[tuple[int, int, int, int]]:
    """Boxes of the separate items standing out from the background (largest first), found as
    connected regions of the foreground mask on a coarse grid. Empty when nothing stands out."""
    found = foreground_box(image)
    if found is None:
        return []
    _, mask = found
    height, width = mask.shape
    cell = max(1, max(height, width) // grid)
    rows, cols = height // cell, width // cell
    coarse = mask[: rows * cell, : cols * cell].reshape(rows, cell, cols, cell).mean(axis=(1, 3))
    occupied = coarse > 0.2
    seen = np.zeros_like(occupied)
    boxes: list[tuple[int, tuple[int, int, int, int]]] = []
    for r0, c0 in zip(*np.nonzero(occupied), strict=True):
        if seen[r0, c0]:
            continue
        stack, cells = [(int(r0), int(c0))], []
        seen[r0, c0] = True
        while stack:
            r, c = stack.pop()
            cells.append((r, c))
            # Neighbours up to GAP cells away: an item with light parts stays one region.
            for dr in range(-_GAP, _GAP + 1):
                for dc in range(-_GAP, _GAP + 1):
                    nr, nc = r + dr, c + dc
                    if 0 <= nr < rows and 0 <= nc < cols and occupied[nr, nc] \
                            and not seen[nr, nc]:
                        seen[nr, nc] = True
                        stack.append((nr, nc))
        if len(cells) < 6:  # specks of noise, not items
            continue
        rs = [r for r, _ in cells]
        cs = [c for _, c in cells]
        boxes.append((len(cells), (min(cs) * cell, min(rs) * cell,
                                   (max(cs) + 1) * cell, (max(rs) + 1) * cell)))
    boxes.sort(key=lambda b: -b[0])
    return [box for _, box in boxes[:max_items]]


def isolate_box(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """The region `box` with its background painted white (as in catalog images)."""
    found = foreground_box(image)
    pixels = np.asarray(image.convert("RGB")).copy()
    if found is not None:
        pixels[~found[1]] = 255
    left, top, right, bottom = box
    return Image.fromarray(pixels[top:bottom, left:right])
