"""Training the local-feature side of photo search: the visual vocabulary (k-means over
catalog descriptors) and the PhotoScorer (logistic regression over verification signals
of labelled photos). Training-split items only: evaluation items never reach either.

    prodsearch train --task vocabulary --limit 2000 --words 4096
    prodsearch train --task photo-scorer --limit 600
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from encoders.local_features import (
    SCORER_FILE,
    VOCABULARY_FILE,
    LocalFeatureExtractor,
    LocalFeatures,
    train_vocabulary,
)
from encoders.preprocess import to_rgb
from encoders.training.data import Item, load_item_image

__all__ = ["build_vocabulary", "catalog_features"]


def catalog_image(item: Item) -> Image.Image:
    """The catalog image as the indexer sees it: alpha on white."""
    return to_rgb(load_item_image(item.image))


def catalog_features(items: Sequence[Item], extractor: LocalFeatureExtractor,
                     progress: bool = True) -> list[LocalFeatures]:
    cv2.setNumThreads(1)
    return [extractor.extract(catalog_image(it))
            for it in tqdm(items, desc="catalog features", unit="image", disable=not progress)]


def build_vocabulary(items: Sequence[Item], size: int, seed: int = 0,
                     out: str | Path = VOCABULARY_FILE, progress: bool = True,
                     command: str = "",
                     features: Sequence[LocalFeatures] | None = None) -> dict[str, Any]:
    """Extracts catalog features of `items` (or takes `features`, one per item, e.g. from
    the evaluation's cache), trains `size` words and saves them."""
    started = time.perf_counter()
    extractor = LocalFeatureExtractor()
    feats = (list(features) if features is not None
             else catalog_features(items, extractor, progress))
    descriptors = np.concatenate([f.descriptors for f in feats if len(f)])
    vocab = train_vocabulary(descriptors, size, seed=seed, progress=progress)
    vocab.info.update({
        "items": len(items), "extractor": extractor.version, "command": command,
        "data": "openclipart train split (encoders.training.data.split_of)",
        "seconds": round(time.perf_counter() - started, 1),
        "sample": _sample_digest([it.key for it in items]),
    })
    vocab.save(out)
    return {"out": str(out), "version": vocab.version, **vocab.info}


def _sample_digest(keys: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha1("\n".join(sorted(keys)).encode()).hexdigest()[:12]


def train_items() -> list[Item]:
    """Every usable openclipart item of the train split (posters skipped by header size)."""
    from encoders.evaluation.datasets import openclipart_items, split_of

    return [Item(key=it.item_id, image=str(it.path), text=it.title, category=it.category)
            for it in openclipart_items() if split_of(it.item_id) == "train"]


def seeded(items: Sequence[Item], n: int | None, seed: int, salt: str) -> list[Item]:
    if n is None or n >= len(items):
        return list(items)
    keep = set(random.Random(f"{salt}:{seed}").sample(range(len(items)), n))
    return [it for k, it in enumerate(items) if k in keep]





def fit_photo_scorer(limit: int = 300, seed: int = 0, out: str | Path = SCORER_FILE,
                     top: int = 30, top_dense: int = 10, precision: float = 0.8,
                     cache_dir: str | Path = "bench/eval_results/cache",
                     progress: bool = True, command: str = "") -> dict[str, Any]:
    """Fits the PhotoScorer at catalog scale: photos of `limit` training items searched
    against every train-split catalog image (thousands, as in production), half of them
    single-item shelf photos among catalog clutter, half restock shelves of 2-5 items.
    Each candidate (top visual-word + top dense ones) is one example, positive when that
    product is in the photo. The verified threshold is the lowest probability whose
    precision on these examples reaches `precision` (restock lists only what passes).
    Catalog features (local and dense) come from the evaluation's cache when present."""
    from encoders.evaluation.datasets import split_of
    from encoders.evaluation.photo_sets import _dense_views, catalog_local_features
    from encoders.evaluation.photos import SHELF, render_scene, render_shelf
    from encoders.evaluation.shelf_photos import _catalog_image, _item_rgba, _openclipart_gallery
    from encoders.evaluation.variants import IMAGE_VARIANTS, Context, gallery_features
    from encoders.local_features import (
        SCORER_SIGNALS,
        PhotoScorer,
        VisualVocabulary,
        fit_logistic,
        scorer_features,
    )
    from encoders.photo_match import PhotoMatcher

    started = time.perf_counter()
    ctx = Context(Path(cache_dir).parent)
    ctx.cache = None if cache_dir == "" else ctx.cache
    if ctx.cache is not None:
        ctx.cache.root = Path(cache_dir)
    gallery = _openclipart_gallery(None, 0)
    extractor = LocalFeatureExtractor()
    feats, _ = catalog_local_features(ctx, gallery, extractor)
    dense_all, _ = gallery_features(ctx, IMAGE_VARIANTS["backbone"], "openclipart",
                                    [it.item_id for it in gallery],
                                    lambda j: _catalog_image(gallery[j]))
    rows_train = [j for j, it in enumerate(gallery) if split_of(it.item_id) == "train"]
    catalog = [gallery[j] for j in rows_train]
    dense_gallery = dense_all[rows_train]
    vocabulary = VisualVocabulary.load()
    matcher = PhotoMatcher([feats[j] for j in rows_train], vocabulary)
    rng = random.Random(f"photo-scorer:{seed}")
    chosen = sorted(rng.sample(range(len(catalog)), min(limit, len(catalog))))
    rows: list[np.ndarray] = []
    labels: list[int] = []
    for n, index in enumerate(tqdm(chosen, desc="scorer photos", unit="photo",
                                   disable=not progress)):
        prng = random.Random(f"scorer:{seed}:{catalog[index].item_id}")
        if n % 2 == 0:  # one item among catalog clutter
            others = [j for j in prng.sample(range(len(catalog)), 9) if j != index][:8]
            scene = render_scene(_item_rgba(str(catalog[index].path)), prng, SHELF,
                                 [_item_rgba(str(catalog[j].path)) for j in others])
            photo = scene.photo
            present = {index, *(others[k] for k in scene.pasted)}
        else:  # a restock shelf of 2-5 items
            shelf = [index, *prng.sample(range(len(catalog)), prng.randint(1, 4))]
            photo, _ = render_shelf([_item_rgba(str(catalog[j].path)) for j in shelf], prng)
            present = set(shelf)
        dense = _dense_views(ctx, photo, dense_gallery)
        query = extractor.extract(photo, query=True)
        extra = [int(j) for j in np.argsort(-dense)[:top_dense]]
        for cand in matcher.candidates(query, top, extra, dense):
            rows.append(scorer_features(cand.signals()))
            labels.append(int(cand.index in present))
    x = np.stack(rows)
    y = np.array(labels, dtype=np.float64)
    weights, bias = fit_logistic(x, y)
    prob = 1.0 / (1.0 + np.exp(-(x @ weights + bias)))
    threshold = _threshold_for_precision(prob, y, precision)
    scorer = PhotoScorer(weights, bias, threshold, info={
        "command": command, "catalog_items": len(catalog), "photos": len(chosen),
        "examples": len(y), "positives": int(y.sum()),
        "candidates_per_photo": f"top {top} visual-word + top {top_dense} dense",
        "extractor": extractor.version, "vocabulary": vocabulary.version,
        "dense": IMAGE_VARIANTS["backbone"].version(ctx) + " max over localise.query_views",
        "data": "openclipart train split only (catalog and photos); half photos.SHELF "
                "single-item photos among catalog clutter, half render_shelf restock "
                "shelves of 2-5 items; seed strings 'scorer:<seed>:<item>'; positive = "
                "candidate product is in the photo",
        "threshold_rule": f"lowest probability with precision >= {precision} on these "
                          "examples",
        "signals_fitted": list(SCORER_SIGNALS),
        "sample": _sample_digest([catalog[i].item_id for i in chosen]),
        "seconds": round(time.perf_counter() - started, 1),
    })
    scorer.save(out)
    verified = prob >= threshold
    trade_off = {}
    for p in (0.5, 0.7, 0.8, 0.9, 0.95, 0.98):
        t = _threshold_for_precision(prob, y, p)
        v = prob >= t
        trade_off[f"precision>={p}"] = {"threshold": t,
                                        "recall": round(float(v[y > 0].mean()), 4)}
    return {"out": str(out), "weights": scorer.weights.round(4).tolist(),
            "trade_off": trade_off,
            "bias": round(bias, 4), "threshold": threshold,
            "precision_at_threshold": round(float(y[verified].mean()), 4) if verified.any()
            else None,
            "recall_at_threshold": round(float(verified[y > 0].mean()), 4) if y.any() else None,
            **scorer.info}


def _threshold_for_precision(prob: np.ndarray, y: np.ndarray, precision: float) -> float:
    order = np.argsort(-prob)
    hits = np.cumsum(y[order])
    prec = hits / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(prec >= precision)
    if len(ok) == 0:
        return 0.99
    # The deepest prefix that is still precise enough, then its lowest probability
    # (rounded down, so that the prefix's last example still passes).
    return math.floor(float(prob[order][ok[-1]]) * 1e4) / 1e4
