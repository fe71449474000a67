"""Real benchmark data: Fashion-MNIST (Debian `dataset-fashion-mnist`) and openclipart
(Debian `openclipart-png`). Nothing here downloads anything; a missing package is reported
with the command that installs it.

The openclipart split is the one the training code uses (`encoders.training.data`): an item
is an evaluation item when the SHA-1 of its path relative to the image root, read as an
integer, is divisible by `EVAL_MODULUS` (about 1 item in 5). It depends on the file name
only, so it is the same on every machine, for every seed, and training never sees those
items. Evaluation photos are rendered with `photo_rng(item_id, seed)`, whose seed strings
("eval:<seed>:<item>") can never equal the training renderer's ("<int seed>:<item>").
"""

from __future__ import annotations

import colorsys
import functools
import gzip
import hashlib
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "EVAL_MODULUS",
    "FMNIST_CLASSES",
    "FMNIST_DIR",
    "FMNIST_PACKAGE",
    "OPENCLIPART_DIR",
    "OPENCLIPART_PACKAGE",
    "ClipartItem",
    "DatasetMissing",
    "dominant_colour",
    "fmnist_image",
    "load_fashion_mnist",
    "load_item_image",
    "openclipart_items",
    "openclipart_split",
    "photo_rng",
    "split_of",
    "subsample",
    "title_from_path",
]

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_PACKAGE = "dataset-fashion-mnist"
FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

OPENCLIPART_DIR = Path("/usr/share/openclipart/png")
OPENCLIPART_PACKAGE = "openclipart-png"
MAX_PIXELS = 4_000_000  # a few files are posters of 100+ megapixels: skipped (header size)
EVAL_MODULUS = 5
WORK_SIDE = 384  # longest side kept in memory: the network sees 224, a photo at most ~330


class DatasetMissing(RuntimeError):
    """A benchmark data set is not installed; the message names the Debian package."""


def _missing(what: str, package: str, where: Path) -> DatasetMissing:
    return DatasetMissing(
        f"{what} not found under {where}: install the Debian package {package} "
        f"(`sudo apt-get install {package}`)"
    )


# ----------------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip): big-endian magic (0, 0, dtype 0x08 = ubyte, ndim), dims, data."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {array.size} values for shape {dims}")
    return array.reshape(dims)


@functools.lru_cache(maxsize=4)
def load_fashion_mnist(split: str, root: Path = FMNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) int64) of 'train' (60,000) or 'test' (10,000).
    Class names: FMNIST_CLASSES[label]."""
    if split not in _FMNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    image_file, label_file = (root / name for name in _FMNIST_FILES[split])
    if not image_file.is_file() or not label_file.is_file():
        raise _missing("Fashion-MNIST", FMNIST_PACKAGE, root)
    images = _read_idx(image_file)
    labels = _read_idx(label_file).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def fmnist_image(pixels: np.ndarray) -> Image.Image:
    """One 28x28 grey Fashion-MNIST image as an RGB PIL image (light item on black)."""
    return Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="L").convert("RGB")


def subsample(n_total: int, n: int | None, seed: int, salt: str) -> np.ndarray:
    """`n` distinct indices out of `n_total` (all when n is None or too big), seeded, sorted."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    rng = random.Random(f"{salt}:{seed}")
    return np.array(sorted(rng.sample(range(n_total), n)), dtype=np.int64)


# -------------------------------------------------------------------------- openclipart


@dataclass(frozen=True)
class ClipartItem:
    item_id: str  # path relative to the image root: stable across machines
    path: Path
    category: str  # folder path "a/b/c"
    title: str

    @property
    def top(self) -> str:
        return self.category.split("/", 1)[0]


def split_of(item_id: str) -> str:
    """'eval' or 'train' (same rule as encoders.training.data.split_of)."""
    digest = int(hashlib.sha1(item_id.encode("utf-8")).hexdigest(), 16)
    return "eval" if digest % EVAL_MODULUS == 0 else "train"


def title_from_path(path: Path) -> str:
    """Files are named "<what>_<author>_NN": the first words describe the picture."""
    words = [w for w in path.stem.replace("-", "_").split("_") if w and not w.isdigit()]
    return " ".join(words[:4]).capitalize() or path.stem


def small_enough(path: Path) -> bool:
    """Pixel count from the header only (the PNG IHDR chunk, else PIL's lazy open)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
        else:
            with Image.open(path) as img:
                width, height = img.size
    except Exception:  # unreadable, or PIL's DecompressionBombError on a poster
        return False
    return 0 < width * height <= MAX_PIXELS


@functools.lru_cache(maxsize=4)
def openclipart_items(root: Path = OPENCLIPART_DIR) -> tuple[ClipartItem, ...]:
    """Every usable image (at most MAX_PIXELS, by header), in path order."""
    paths = sorted(root.rglob("*.png")) if root.is_dir() else []
    if not paths:
        raise _missing("openclipart images", OPENCLIPART_PACKAGE, root)
    items = []
    for path in paths:
        if not small_enough(path):
            continue
        rel = path.relative_to(root)
        items.append(
            ClipartItem(
                item_id=str(rel),
                path=path,
                category="/".join(rel.parent.parts),
                title=title_from_path(path),
            )
        )
    return tuple(items)


def openclipart_split(
    root: Path = OPENCLIPART_DIR,
) -> tuple[tuple[ClipartItem, ...], tuple[ClipartItem, ...]]:
    """(train items, eval items): disjoint, together every usable item, fixed by file name."""
    items = openclipart_items(root)
    train = tuple(it for it in items if split_of(it.item_id) == "train")
    evaluation = tuple(it for it in items if split_of(it.item_id) == "eval")
    return train, evaluation


def photo_rng(item_id: str, seed: int) -> random.Random:
    """The random stream that renders the evaluation photo of one item. The string form
    "eval:<seed>:<item>" keeps it apart from the training renderer's "<seed>:<item>"."""
    return random.Random(f"eval:{seed}:{item_id}")


def load_item_image(path: Path | str, side: int = WORK_SIDE) -> Image.Image:
    """RGBA, longest side at most `side` (alpha kept: the photo renderer pastes with it)."""
    with Image.open(path) as img:
        img.draft("RGB", (side, side))
        rgba = img.convert("RGBA")
    rgba.thumbnail((side, side), Image.Resampling.LANCZOS)
    return rgba


def dominant_colour(image: Image.Image) -> str:
    """A colour name from the opaque, non-white pixels (as the demo catalog measures it)."""
    rgba = image.convert("RGBA")
    rgba.thumbnail((64, 64))
    pixels = np.asarray(rgba, dtype=np.float32).reshape(-1, 4)
    pixels = pixels[(pixels[:, 3] > 128) & (pixels[:, :3].min(axis=1) < 235)]
    if len(pixels) == 0:
        return "white"
    r, g, b = (float(c) for c in pixels[:, :3].mean(axis=0) / 255)
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    if v < 0.2:
        return "black"
    if s < 0.18:
        return "white" if v > 0.85 else "grey"
    hue = h * 360
    for limit, name in ((15, "red"), (40, "orange" if v > 0.6 else "brown"), (70, "yellow"),
                        (170, "green"), (255, "blue"), (290, "purple"), (340, "pink")):
        if hue < limit:
            return name
    return "red"
