"""Training data: catalog items (image path, text, category) from a catalog JSONL file or
from the openclipart train split.

The openclipart split is deterministic and independent of any seed: an item belongs to the
evaluation part when the SHA-1 of its path relative to the image root, read as an integer,
is divisible by `EVAL_MODULUS` (about 1 item in 5). Training never sees those items.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

__all__ = [
    "EVAL_MODULUS",
    "OPENCLIPART_DIR",
    "Item",
    "load_catalog",
    "load_item_image",
    "openclipart_items",
    "split_of",
]

OPENCLIPART_DIR = Path("/usr/share/openclipart/png")
MAX_PIXELS = 4_000_000  # posters of 100+ megapixels are skipped (read from the header)
EVAL_MODULUS = 5
# Longest side kept in memory for rendering and encoding: the network sees 224 pixels and a
# photo puts the item at most 0.85 x 384 pixels.
WORK_SIDE = 384


@dataclass(frozen=True)
class Item:
    key: str  # stable id: the sku, or the path relative to the image root
    image: str  # local path
    text: str
    category: str = ""


def split_of(key: str) -> str:
    """'eval' or 'train' for an item key; stable across machines and runs."""
    digest = int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16)
    return "eval" if digest % EVAL_MODULUS == 0 else "train"


def _title(path: Path) -> str:
    words = [w for w in path.stem.replace("-", "_").split("_") if w and not w.isdigit()]
    return " ".join(words[:4]).capitalize() or path.stem


def _small_enough(path: Path) -> bool:
    try:
        with Image.open(path) as img:  # header only
            return img.width * img.height <= MAX_PIXELS
    except OSError:
        return False


def openclipart_items(
    split: str = "train",
    root: Path = OPENCLIPART_DIR,
    limit: int | None = None,
    seed: int = 0,
) -> list[Item]:
    """Items of one split ('train', 'eval' or 'all'), in path order; with `limit`, a
    seeded sample of that many (still in path order)."""
    if split not in ("train", "eval", "all"):
        raise ValueError(f"split must be 'train', 'eval' or 'all', got {split!r}")
    items: list[Item] = []
    for path in sorted(root.rglob("*.png")):
        key = str(path.relative_to(root))
        if split != "all" and split_of(key) != split:
            continue
        category = "/".join(path.relative_to(root).parent.parts)
        title = _title(path)
        text = f"{title} . {category.replace('/', ' ')}"
        items.append(Item(key=key, image=str(path), text=text, category=category))
    if limit is not None and limit < len(items):
        keep = set(random.Random(seed).sample(range(len(items)), limit))
        items = [it for n, it in enumerate(items) if n in keep]
    return [it for it in items if _small_enough(Path(it.image))]


def load_catalog(path: str | Path) -> list[Item]:
    """Items from a catalog JSONL file (the `prodsearch ingest` format): one item per
    product, its first readable image, the text the indexer encodes."""
    items: list[Item] = []
    base = Path(path).parent
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            if not line.strip():
                continue
            row = json.loads(line)
            images: Iterable[str] = row.get("images") or []
            image = next((str(_resolve(base, i)) for i in images if _resolve(base, i).exists()),
                         None)
            if image is None:
                continue
            parts = [row.get("title", ""), row.get("description", ""),
                     str(row.get("category", "")).replace("/", " "), row.get("brand", ""),
                     row.get("colour", ""), row.get("material", "")]
            text = " . ".join(str(p) for p in parts if p)
            items.append(Item(key=str(row.get("sku") or n), image=image, text=text,
                              category=str(row.get("category", ""))))
    return items


def _resolve(base: Path, ref: str) -> Path:
    ref = ref.removeprefix("file://")
    p = Path(ref).expanduser()
    return p if p.is_absolute() else base / p


def load_item_image(path: str, side: int = WORK_SIDE) -> Image.Image:
    """RGBA, longest side at most `side` (alpha kept: the photo renderer pastes with it)."""
    with Image.open(path) as img:
        img.draft("RGB", (side, side))
        rgba = img.convert("RGBA")
    rgba.thumbnail((side, side), Image.Resampling.LANCZOS)
    return rgba
