"""Photo-like renderings of catalog images: what a shopper's, a merchant's or a warehouse
worker's phone sees. Part of the product itself (match calibration builds its labelled
listing photos with it, reindex its recall check), and used by evaluation (the `shelf`
task), training, the demo and tests. Deterministic for a given `random.Random`."""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class PhotoStyle:
    """How hard a rendering is. `easy` is a product photo (item fills the frame on a plain
    surface); `shelf` is a small, off-centre item among distractors on a cluttered shelf."""

    canvas: int = 320
    item_scale: tuple[float, float] = (0.6, 0.85)  # item's longer side / canvas
    rotation: float = 10.0  # degrees, either way
    perspective: float = 0.0  # corner jitter as a fraction of the item size
    distractors: tuple[int, int] = (0, 0)
    texture: float = 0.15  # 0 = flat tint, 1 = pure noise
    lighting: float = 0.1  # brightness/contrast/colour jitter
    blur: tuple[float, float] = (0.3, 0.8)
    jpeg_quality: tuple[int, int] = (75, 90)
    # Harder conditions, off in EASY and SHELF (their photos stay as they were):
    occlusion: float = 0.0  # up to this share of the item's box hidden by an occluder
    glare: float = 0.0  # strength of a specular highlight (0..1)
    noise: float = 0.0  # sensor noise, grey levels (Gaussian sigma)


EASY = PhotoStyle()
SHELF = PhotoStyle(
    canvas=384,
    item_scale=(0.3, 0.6),
    rotation=20.0,
    perspective=0.12,
    distractors=(2, 5),
    texture=0.45,
    lighting=0.3,
    blur=(0.3, 1.5),
    jpeg_quality=(45, 85),
)
# The photo sets of the shelf evaluation: SHELF plus occlusion, glare and sensor noise;
# a product photo (item fills the frame) with perspective, coloured light, glare and noise.
SHELF_HARD = replace(SHELF, occlusion=0.3, glare=0.6, noise=6.0)
PRODUCT_HARD = replace(EASY, item_scale=(0.7, 0.9), rotation=15.0, perspective=0.1,
                       texture=0.3, lighting=0.3, blur=(0.3, 1.2), jpeg_quality=(50, 85),
                       occlusion=0.15, glare=0.6, noise=5.0)
# A merchant's own listing photo at its worst: the item is the subject but photographed in
# perspective, with one to three other things around it (catalog images, so the clutter is
# as product-like as the item), partly covered, under coloured light, as a low-quality JPEG.
LISTING_HARD = replace(EASY, canvas=384, item_scale=(0.5, 0.75), rotation=15.0,
                       perspective=0.12, distractors=(1, 3), texture=0.4, lighting=0.3,
                       blur=(0.3, 1.2), jpeg_quality=(30, 60), occlusion=0.2, noise=3.0)


def _rgba(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGBA" else image.convert("RGBA")


def _item_layer(item: Image.Image, side: int, style: PhotoStyle, rng: random.Random
                ) -> Image.Image:
    """The item scaled to `side` pixels (longer side), warped and rotated, with alpha."""
    layer = _rgba(item).copy()
    layer.thumbnail((side, side), Image.Resampling.LANCZOS)
    if style.perspective > 0:
        w, h = layer.size
        j = style.perspective
        corners = [(rng.uniform(-j, j) * w + x, rng.uniform(-j, j) * h + y)
                   for x, y in ((0, 0), (w, 0), (w, h), (0, h))]
        layer = layer.transform(
            (w, h), Image.Transform.PERSPECTIVE, _perspective_coeffs(corners, w, h),
            Image.Resampling.BICUBIC)
    angle = rng.uniform(-style.rotation, style.rotation)
    return layer.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)


def _perspective_coeffs(src: Sequence[tuple[float, float]], w: int, h: int) -> tuple[float, ...]:
    """Coefficients mapping the output rectangle onto the jittered source quadrilateral."""
    dst = [(0, 0), (w, 0), (w, h), (0, h)]
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    a = np.array(rows, dtype=np.float64)
    b = np.array([c for point in src for c in point], dtype=np.float64)
    return tuple(float(c) for c in np.linalg.solve(a, b))


def _background(size: int, style: PhotoStyle, rng: random.Random) -> Image.Image:
    tint = Image.new("RGB", (size, size), tuple(rng.randrange(90, 235) for _ in range(3)))
    # Grey Gaussian noise around 128, as Image.effect_noise makes, but drawn from `rng`:
    # effect_noise uses the C library's generator, so photos would differ run to run.
    sigma = rng.uniform(20, 60)
    grain = np.random.default_rng(rng.getrandbits(64)).normal(128.0, sigma, (size, size))
    noise = Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8)).convert("RGB")
    noise = noise.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 2.0)))
    background = Image.blend(tint, noise, style.texture)
    # A soft light gradient, as from a window or a shelf lamp.
    ramp = np.linspace(rng.uniform(0.75, 1.0), rng.uniform(1.0, 1.2), size, dtype=np.float32)
    ramp = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
    pixels = np.asarray(background, dtype=np.float32) * ramp[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _content_box(layer: Image.Image, x: int, y: int) -> Box:
    """Where the item's opaque pixels landed (its layer's box includes transparent margins)."""
    inner = layer.getchannel("A").getbbox() or (0, 0, layer.width, layer.height)
    return (x + inner[0], y + inner[1], x + inner[2], y + inner[3])


def _occlude(photo: Image.Image, box: Box, share: float, rng: random.Random) -> None:
    """A finger, price tag or shelf edge over part of the item: a solid bar or blob in a
    muted colour covering up to `share` of the item's box, entering from one side."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cover = rng.uniform(0.3, 1.0) * share
    colour = tuple(rng.randrange(30, 200) for _ in range(3))
    draw = ImageDraw.Draw(photo)
    side = rng.randrange(4)
    if side == 0:
        region = (x0 - 2, y0 - 2, x0 + int(w * cover), y1 + 2)
    elif side == 1:
        region = (x1 - int(w * cover), y0 - 2, x1 + 2, y1 + 2)
    elif side == 2:
        region = (x0 - 2, y0 - 2, x1 + 2, y0 + int(h * cover))
    else:
        region = (x0 - 2, y1 - int(h * cover), x1 + 2, y1 + 2)
    if rng.random() < 0.5:
        draw.rectangle(region, fill=colour)
    else:
        draw.ellipse(region, fill=colour)


def _glare(photo: Image.Image, strength: float, rng: random.Random) -> Image.Image:
    """A soft specular highlight: a bright elliptical blob blended towards white."""
    w, h = photo.size
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    rx, ry = rng.uniform(0.08, 0.3) * w, rng.uniform(0.05, 0.2) * h
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    alpha = np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)) * rng.uniform(
        0.4, 1.0) * strength
    pixels = np.asarray(photo, dtype=np.float32)
    pixels = pixels * (1 - alpha[..., None]) + 255.0 * alpha[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _finish(photo: Image.Image, style: PhotoStyle, rng: random.Random) -> Image.Image:
    if style.glare > 0:
        photo = _glare(photo, style.glare, rng)
    light = style.lighting
    if light > 0:
        photo = ImageEnhance.Brightness(photo).enhance(rng.uniform(1 - light, 1 + light))
        photo = ImageEnhance.Contrast(photo).enhance(rng.uniform(1 - light, 1 + light / 2))
        cast = np.array([rng.uniform(1 - light / 3, 1 + light / 3) for _ in range(3)])
        pixels = np.asarray(photo, dtype=np.float32) * cast
        photo = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    photo = photo.filter(ImageFilter.GaussianBlur(rng.uniform(*style.blur)))
    if style.noise > 0:
        grain = np.random.default_rng(rng.getrandbits(64)).normal(
            0.0, style.noise, (photo.height, photo.width, 1))
        pixels = np.asarray(photo, dtype=np.float32) + grain
        photo = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    photo.save(out, format="JPEG", quality=rng.randint(*style.jpeg_quality))
    out.seek(0)
    return Image.open(out).convert("RGB")


@dataclass(frozen=True)
class Scene:
    """A rendered photo, the item's box in it, and which distractors were pasted into it
    (indices into the `distractors` given; they may be partly hidden or cut by the frame)."""

    photo: Image.Image
    box: Box
    pasted: tuple[int, ...]


def render_scene(
    item: Image.Image,
    rng: random.Random,
    style: PhotoStyle = EASY,
    distractors: Sequence[Image.Image] = (),
) -> Scene:
    """A photo of one catalog item. `distractors` are other catalog images that may appear
    around (and under) the item."""
    size = style.canvas
    photo = _background(size, style, rng)
    low, high = style.distractors
    chosen = rng.sample(range(len(distractors)), min(len(distractors), rng.randint(low, high)))
    for index in chosen:
        layer = _item_layer(distractors[index], int(size * rng.uniform(0.25, 0.5)), style, rng)
        photo.paste(layer, (rng.randrange(-layer.width // 3, size - layer.width // 2),
                            rng.randrange(-layer.height // 3, size - layer.height // 2)), layer)
    layer = _item_layer(item, int(size * rng.uniform(*style.item_scale)), style, rng)
    x = rng.randrange(0, max(1, size - layer.width))
    y = rng.randrange(0, max(1, size - layer.height))
    photo.paste(layer, (x, y), layer)
    box = (x, y, min(size, x + layer.width), min(size, y + layer.height))
    if style.occlusion > 0:
        _occlude(photo, _content_box(layer, x, y), style.occlusion, rng)
    return Scene(_finish(photo, style, rng), box, tuple(chosen))


def render_photo(
    item: Image.Image,
    rng: random.Random,
    style: PhotoStyle = EASY,
    distractors: Sequence[Image.Image] = (),
) -> tuple[Image.Image, Box]:
    """A photo of one catalog item and the item's box in it (see `render_scene`)."""
    scene = render_scene(item, rng, style, distractors)
    return scene.photo, scene.box


def render_shelf(
    items: Sequence[Image.Image],
    rng: random.Random,
    size: tuple[int, int] = (768, 384),
    style: PhotoStyle = SHELF,
) -> tuple[Image.Image, list[Box]]:
    """Several items side by side on one shelf photo (the restock case); returns the photo
    and each item's box, in the order of `items`."""
    width, height = size
    photo = _background(max(size), style, rng).crop((0, 0, width, height))
    slot = width // max(1, len(items))
    boxes: list[Box] = []
    for n, item in enumerate(items):
        side = int(min(slot, height) * rng.uniform(0.65, 0.9))
        layer = _item_layer(item, side, style, rng)
        x = n * slot + rng.randrange(0, max(1, slot - layer.width))
        y = rng.randrange(0, max(1, height - layer.height))
        photo.paste(layer, (x, y), layer)
        boxes.append((x, y, min(width, x + layer.width), min(height, y + layer.height)))
        if style.occlusion > 0:
            _occlude(photo, _content_box(layer, x, y), style.occlusion, rng)
    return _finish(photo, style, rng), boxes


def photo_jpeg(photo: Image.Image, quality: int = 85) -> bytes:
    out = io.BytesIO()
    photo.save(out, format="JPEG", quality=quality)
    return out.getvalue()
