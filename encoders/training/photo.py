"""Training the local-feature side of photo search: the visual vocabulary (k-means over
catalog descriptors) and the PhotoScorer (logistic regression over verification signals
of labelled photos). Training-split items only: evaluation items never reach either.

    prodsearch train --task vocabulary --limit 2000 --words 4096
    prodsearch train --task photo-scorer --limit 600
"""

from __future__ import annotations

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





def _training_photo(items: Sequence[Item], index: int, seed: int, pool: int = 8
                    ) -> tuple[Image.Image, frozenset[int]]:
    """A shelf photo of training item `index` among distractors from the same items; seed
    strings "scorer:<seed>:<item>" never equal the evaluation renderer's."""
    from encoders.evaluation.photos import SHELF, render_scene

    rng = random.Random(f"scorer:{seed}:{items[index].key}")
    others = [j for j in rng.sample(range(len(items)), min(len(items), pool + 1))
              if j != index][:pool]
    scene = render_scene(load_item_image(items[index].image), rng, SHELF,
                         [load_item_image(items[j].image) for j in others])
    return scene.photo, frozenset([index, *(others[k] for k in scene.pasted)])


def fit_photo_scorer(items: Sequence[Item], limit: int = 400, seed: int = 0,
                     out: str | Path = SCORER_FILE, top: int = 30, precision: float = 0.98,
                     progress: bool = True, command: str = "") -> dict[str, Any]:
    """Fits the PhotoScorer on shelf photos of `limit` training items against a catalog of
    the same items: every verified-or-not candidate of each photo is one example, positive
    when that product is in the photo. The verified threshold is the lowest probability
    whose precision on these examples reaches `precision` (restock lists only what passes).
    """
    from encoders.local_features import (
        SCORER_SIGNALS,
        PhotoScorer,
        VisualVocabulary,
        fit_logistic,
        scorer_features,
    )
    from encoders.photo_match import PhotoMatcher

    started = time.perf_counter()
    chosen = seeded(items, limit, seed, "photo-scorer")
    extractor = LocalFeatureExtractor()
    vocabulary = VisualVocabulary.load()
    matcher = PhotoMatcher(catalog_features(chosen, extractor, progress), vocabulary)
    rows: list[np.ndarray] = []
    labels: list[int] = []
    for n in tqdm(range(len(chosen)), desc="scorer photos", unit="photo",
                  disable=not progress):
        photo, present = _training_photo(chosen, n, seed)
        query = extractor.extract(photo, query=True)
        for cand in matcher.candidates(query, top):
            rows.append(scorer_features(cand.signals()))
            labels.append(int(cand.index in present))
    x = np.stack(rows)
    y = np.array(labels, dtype=np.float64)
    # dense_cos is not measured here (no CNN in this loop): its column holds the default,
    # so its weight stays at zero and the scorer ignores it until fitted with it.
    weights, bias = fit_logistic(x, y)
    prob = 1.0 / (1.0 + np.exp(-(x @ weights + bias)))
    threshold = _threshold_for_precision(prob, y, precision)
    scorer = PhotoScorer(weights, bias, threshold, info={
        "command": command, "items": len(chosen), "photos": len(chosen),
        "examples": len(y), "positives": int(y.sum()), "candidates_per_photo": top,
        "extractor": extractor.version, "vocabulary": vocabulary.version,
        "data": "openclipart train split; photos.SHELF renderings, seed strings "
                "'scorer:<seed>:<item>'; positive = candidate product is in the photo",
        "threshold_rule": f"lowest probability with precision >= {precision} on these "
                          "examples",
        "signals_fitted": [s for s in SCORER_SIGNALS if s != "dense_cos"],
        "sample": _sample_digest([it.key for it in chosen]),
        "seconds": round(time.perf_counter() - started, 1),
    })
    scorer.save(out)
    verified = prob >= threshold
    return {"out": str(out), "weights": scorer.weights.round(4).tolist(),
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
    # The deepest prefix that is still precise enough, then its lowest probability.
    return round(float(prob[order][ok[-1]]), 4)
