"""A demo catalog made from real images: Debian's openclipart-png (8,121 colour images in
category folders). Titles and categories come from the files; colour is measured from the
pixels; the other attributes are drawn with a fixed seed so every run builds the same catalog."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

from PIL import Image

from encoders.evaluation.datasets import (
    OPENCLIPART_DIR,
    dominant_colour,
    small_enough,
    title_from_path,
)

DEBIAN_PACKAGE = "openclipart-png"

MATERIALS = ("cotton", "wool", "leather", "plastic", "metal", "wood", "glass", "paper")
SIZES = ("XS", "S", "M", "L", "XL")
BRANDS = ("Acme", "Nordwind", "Lumen", "Kiko", "Orbis", "Tessera")
MERCHANTS = ("north-shop", "south-shop")
WAREHOUSES = ("berlin", "lyon")


class ImagesMissing(RuntimeError):
    pass


def ensure_openclipart(install: bool = True) -> Path:
    """The image folder; installs the Debian package when allowed and possible."""
    if _count_pngs(OPENCLIPART_DIR) > 0:
        return OPENCLIPART_DIR
    if install and shutil.which("apt-get"):
        print(f"installing the Debian package {DEBIAN_PACKAGE} (real product-like images)...")
        subprocess.run(["apt-get", "install", "-y", "-q", DEBIAN_PACKAGE], check=False)
        if _count_pngs(OPENCLIPART_DIR) > 0:
            return OPENCLIPART_DIR
    raise ImagesMissing(
        f"the demo needs real images from the Debian package {DEBIAN_PACKAGE}: "
        f"run `sudo apt-get install {DEBIAN_PACKAGE}` (it installs {OPENCLIPART_DIR})"
    )


def _count_pngs(root: Path) -> int:
    return sum(1 for _ in root.rglob("*.png")) if root.is_dir() else 0


def pick_images(root: Path, count: int, seed: int = 7) -> list[Path]:
    """`count` images spread evenly over the top-level categories, deterministic."""
    by_category: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(root.rglob("*.png")):
        by_category[path.relative_to(root).parts[0]].append(path)
    rng = random.Random(seed)
    for paths in by_category.values():
        rng.shuffle(paths)
    picked: list[Path] = []
    queues = [by_category[c] for c in sorted(by_category)]
    while len(picked) < count and any(queues):
        for queue in queues:
            while queue and len(picked) < count:
                path = queue.pop()
                if small_enough(path):
                    picked.append(path)
                    break
    return picked


def build_catalog(images: list[Path], root: Path, seed: int = 11) -> list[dict[str, object]]:
    rng = random.Random(seed)
    products: list[dict[str, object]] = []
    for n, path in enumerate(images):
        category = "/".join(path.relative_to(root).parent.parts)
        title = title_from_path(path)
        with Image.open(path) as img:
            colour = dominant_colour(img)
        material = rng.choice(MATERIALS)
        products.append(
            {
                "sku": f"OC-{n:05d}",
                "merchant": MERCHANTS[n % len(MERCHANTS)],
                "title": title,
                "description": f"{title}: a {colour} {material} item from our "
                f"{category.replace('/', ' ')} range.",
                "category": category,
                "brand": rng.choice(BRANDS),
                "size": rng.choice(SIZES),
                "material": material,
                "colour": colour,
                "price": round(rng.uniform(3, 200), 2),
                "currency": "EUR",
                "images": [str(path)],
                "inventory": [
                    {
                        "warehouse": wh,
                        "bin": f"{chr(65 + rng.randrange(6))}-{rng.randrange(1, 40):02d}",
                        "quantity": rng.choice((0, 0, 1, 2, 5, 12, 30)),
                        "reorder_point": rng.choice((2, 5)),
                    }
                    for wh in WAREHOUSES
                ],
                "source": "openclipart",
            }
        )
    return products


def write_catalog(products: list[dict[str, object]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for product in products:
            fh.write(json.dumps(product, ensure_ascii=False) + "\n")
    tmp.replace(path)
