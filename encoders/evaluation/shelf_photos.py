"""The shelf evaluation's photos and galleries, shared by `tasks` and `photo_sets`: the
openclipart gallery, the evaluation-split queries, the catalog-clutter rendering of one
query and the Recall@K curve."""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from encoders.evaluation import metrics
from encoders.evaluation.datasets import (
    ClipartItem,
    load_item_image,
    openclipart_items,
    photo_rng,
    split_of,
)
from encoders.evaluation.photos import SHELF, PhotoStyle, render_scene
from encoders.preprocess import to_rgb

CURVE_KS = (1, 2, 3, 5, 10, 20, 50, 100)


def _curve(ranked: np.ndarray) -> dict[str, float]:
    ks = [k for k in CURVE_KS if k <= ranked.shape[1]]
    return {str(k): round(v, 4) for k, v in metrics.recall_curve(ranked, ks).items()}



@functools.lru_cache(maxsize=1024)
def _item_rgba(path: str) -> Image.Image:
    return load_item_image(path)


def _catalog_image(item: ClipartItem) -> Image.Image:
    """The catalog image as the indexer sees it: alpha on white."""
    return to_rgb(_item_rgba(str(item.path)))


def _openclipart_gallery(limit: int | None, seed: int) -> list[ClipartItem]:
    """All usable items, or a seeded sample of `limit` of them (in path order)."""
    items = list(openclipart_items())
    if limit is not None and limit < len(items):
        keep = set(random.Random(f"gallery:{seed}").sample(range(len(items)), limit))
        items = [it for n, it in enumerate(items) if n in keep]
    return items


def _eval_queries(gallery: Sequence[ClipartItem], n: int | None, seed: int) -> list[int]:
    """Gallery indices of up to `n` evaluation-split items (seeded choice, path order)."""
    eval_idx = [i for i, it in enumerate(gallery) if split_of(it.item_id) == "eval"]
    if n is not None and n < len(eval_idx):
        eval_idx = sorted(random.Random(f"queries:{seed}").sample(eval_idx, n))
    return eval_idx


@dataclass(frozen=True)
class ShelfQuery:
    photo: Image.Image
    box: tuple[int, int, int, int]  # the item's true box in the photo
    in_photo: frozenset[int]  # gallery indices of the item and the distractors pasted


def render_query(gallery: Sequence[ClipartItem], index: int, seed: int,
                 style: PhotoStyle = SHELF, pool: int = 8) -> ShelfQuery:
    """The evaluation photo of gallery item `index`, among distractors drawn from the other
    gallery items; deterministic for (item, seed)."""
    item = gallery[index]
    rng = photo_rng(item.item_id, seed)
    others = [j for j in rng.sample(range(len(gallery)), min(len(gallery), pool + 1))
              if j != index][:pool]
    distractors = [_item_rgba(str(gallery[j].path)) for j in others]
    scene = render_scene(_item_rgba(str(item.path)), rng, style, distractors=distractors)
    return ShelfQuery(scene.photo, scene.box,
                      frozenset([index, *(others[k] for k in scene.pasted)]))
