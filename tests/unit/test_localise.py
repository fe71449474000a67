"""Query-photo item isolation on a small copy gives the item the full-size search finds: the
same box (to a few pixels of the small copy's grid), the same pixels kept and painted white,
at the full photo's resolution; nothing where nothing stands out."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from encoders.localise import QUERY_MASK_SIDE, isolate_item, query_views


def _photo(size: tuple[int, int] = (1600, 1200), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    noise = rng.normal(170, 6, (h // 8, w // 8, 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(noise).resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    draw.ellipse((w * 0.30, h * 0.35, w * 0.62, h * 0.80), fill=(200, 30, 40))
    draw.rectangle((w * 0.40, h * 0.45, w * 0.50, h * 0.55), fill=(20, 40, 160))
    return img


def _white(item: np.ndarray) -> np.ndarray:
    return (item == 255).all(axis=2)


def test_small_copy_isolates_the_same_item_at_full_resolution() -> None:
    photo = _photo()
    full = isolate_item(photo, mask_side=0)
    small = isolate_item(photo, mask_side=QUERY_MASK_SIDE)
    assert full is not None and small is not None
    # Same item, cropped from the full photo: sizes agree to within a few small-copy pixels
    # (1600 / 320 = 5 px each; the blur and the edge percentiles work on that grid).
    assert abs(full.width - small.width) <= 20 and abs(full.height - small.height) <= 20
    assert small.width > 400  # full resolution, not the 320 px copy
    a = np.asarray(full.resize(small.size, Image.Resampling.NEAREST))
    b = np.asarray(small)
    assert np.mean(_white(a) == _white(b)) > 0.97  # the same pixels painted white
    assert (b[~_white(b)][:, 0] > 150).mean() > 0.5  # what is kept is mostly the red item


def test_small_photos_and_blank_photos() -> None:
    small_photo = _photo((300, 200))
    assert np.array_equal(np.asarray(isolate_item(small_photo, mask_side=QUERY_MASK_SIDE)),
                          np.asarray(isolate_item(small_photo, mask_side=0)))
    blank = Image.new("RGB", (1600, 1200), (170, 170, 170))
    assert isolate_item(blank, mask_side=QUERY_MASK_SIDE) is None
    assert query_views(blank) == [blank]
    views = query_views(_photo())
    assert len(views) == 2 and views[1].width > QUERY_MASK_SIDE
