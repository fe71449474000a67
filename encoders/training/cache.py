"""Cached backbone features: each catalog image and N photo-like renderings of it go through
the frozen CNN once; training then reads fp16 tokens from disk instead of running the CNN.

A cache directory holds
    meta.json          the items, the seed, the photo style, the views, the backbone
    catalog.npy        (N, 49, 1280) fp16  tokens of the catalog image (alpha on white)
    photos.npy         (N, P, V, 49, 1280) fp16  tokens of each photo's V views:
                       0 = the whole photo, 1 = the isolated item (`localise.isolate_item`,
                       as search's query path makes it) or, when nothing stands out, a loose
                       square crop around the item
    text_<name>.npz    text tokens for one text encoder (built on first use)
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from encoders.evaluation.photos import EASY, SHELF, PhotoStyle, render_photo
from encoders.image import EfficientNetLite0Encoder
from encoders.localise import isolate_item
from encoders.preprocess import to_rgb
from encoders.training.data import Item, load_item_image

__all__ = ["CACHE_FORMAT", "FeatureCache", "build_cache", "photo_views"]

CACHE_FORMAT = 1
VIEWS = ("whole", "isolated")
_DISTRACTOR_POOL = 256


def photo_views(photo: Image.Image, box: tuple[int, int, int, int], rng: random.Random
                ) -> list[Image.Image]:
    """The training views of one rendered photo (see the module docstring)."""
    left, top, right, bottom = box
    item = isolate_item(photo)
    if item is not None:
        return [photo, item]
    side = max(right - left, bottom - top) * rng.uniform(1.1, 1.6)
    cx = (left + right) / 2 + rng.uniform(-0.15, 0.15) * side
    cy = (top + bottom) / 2 + rng.uniform(-0.15, 0.15) * side
    crop = photo.crop((round(cx - side / 2), round(cy - side / 2),
                       round(cx + side / 2), round(cy + side / 2)))
    return [photo, crop]


def build_cache(
    items: Sequence[Item],
    out_dir: str | Path,
    *,
    photos_per_item: int = 2,
    seed: int = 0,
    style: str = "shelf",
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Render and encode everything once; returns the cache directory. An existing cache with
    the same description is reused as it is; an interrupted one continues where it stopped
    (`progress.json` counts the items written)."""
    out = Path(out_dir)
    meta = {
        "format": CACHE_FORMAT,
        "backbone": EfficientNetLite0Encoder.name,
        "items": [asdict(it) for it in items],
        "photos_per_item": photos_per_item,
        "views": list(VIEWS),
        "seed": seed,
        "style": style,
    }
    meta_path = out / "meta.json"
    done = meta_path.exists() and (out / "photos.npy").exists()
    if done and json.loads(meta_path.read_text()) == meta:
        return out
    out.mkdir(parents=True, exist_ok=True)
    progress_path = out / "progress.json"
    first = 0
    if progress_path.exists() and (out / "photos.tmp.npy").exists():
        saved = json.loads(progress_path.read_text())
        if saved.get("meta") == meta:
            first = int(saved["done"])
    photo_style: PhotoStyle = SHELF if style == "shelf" else EASY
    encoder = EfficientNetLite0Encoder(device=device)
    encoder.load()
    n, grid, dim = len(items), encoder.grid * encoder.grid, encoder.dim
    mode = "r+" if first else "w+"
    catalog = np.lib.format.open_memmap(out / "catalog.tmp.npy", mode=mode, dtype=np.float16,
                                        shape=(n, grid, dim))
    photos = np.lib.format.open_memmap(
        out / "photos.tmp.npy", mode=mode, dtype=np.float16,
        shape=(n, photos_per_item, len(VIEWS), grid, dim))
    rng = random.Random(seed)
    pool_ids = rng.sample(range(n), min(n, _DISTRACTOR_POOL))
    pool = [load_item_image(items[i].image, 192) for i in pool_ids]
    bar = tqdm(total=n, initial=first, desc=f"caching features ({out.name})",
               disable=not progress, unit="item")
    for start in range(first, n, batch_size):
        chunk = items[start : start + batch_size]
        images: list[Image.Image] = []
        for k, item in enumerate(chunk):
            rgba = load_item_image(item.image)
            images.append(to_rgb(rgba))
            item_rng = random.Random(f"{seed}:{item.key}")
            others = [p for p, i in zip(pool, pool_ids, strict=True) if i != start + k]
            for _ in range(photos_per_item):
                photo, box = render_photo(rgba, item_rng, photo_style, others)
                images.extend(photo_views(photo, box, item_rng))
        tokens = encoder.encode_tokens(images).to(torch.float16).cpu().numpy()
        per = 1 + photos_per_item * len(VIEWS)
        tokens = tokens.reshape(len(chunk), per, grid, dim)
        catalog[start : start + len(chunk)] = tokens[:, 0]
        photos[start : start + len(chunk)] = tokens[:, 1:].reshape(
            len(chunk), photos_per_item, len(VIEWS), grid, dim)
        catalog.flush()
        photos.flush()
        progress_path.write_text(json.dumps({"meta": meta, "done": start + len(chunk)}))
        bar.update(len(chunk))
    bar.close()
    catalog.flush()
    photos.flush()
    del catalog, photos
    (out / "catalog.tmp.npy").replace(out / "catalog.npy")
    (out / "photos.tmp.npy").replace(out / "photos.npy")
    meta_path.write_text(json.dumps(meta))
    progress_path.unlink(missing_ok=True)
    return out


class FeatureCache:
    """Read side of a cache directory (arrays memory-mapped)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.items = [Item(**row) for row in self.meta["items"]]
        self.catalog: np.ndarray = np.load(self.path / "catalog.npy", mmap_mode="r")
        self.photos: np.ndarray = np.load(self.path / "photos.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self.items)

    def description(self) -> dict[str, object]:
        """What the cache was made from, without the item list (for checkpoints)."""
        keys = [it.key for it in self.items]
        digest = __import__("hashlib").sha1("\n".join(keys).encode()).hexdigest()[:12]
        return {k: v for k, v in self.meta.items() if k != "items"} | {
            "n_items": len(keys), "items_sha1": digest}
