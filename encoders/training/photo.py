"""Training the local-feature side of photo search: the descriptor index's quantisers
(k-means coarse lists and 8-bit ranges over catalog RootSIFT descriptors), the visual
vocabulary (k-means over catalog descriptors) and the PhotoScorer (logistic regression
over vote and verification signals of labelled photos). Training-split items only:
evaluation items never reach any of them.

    prodsearch train --task descriptor-index --limit 1000 --lists 2048
    prodsearch train --task vocabulary --limit 2000 --words 4096
    prodsearch train --task photo-scorer --limit 240 --scorer-catalog 1000
"""

from __future__ import annotations

import json
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


def train_catalog(size: int | None, seed: int = 0) -> list[Any]:
    """A seeded sample of `size` train-split openclipart items (all with None), as the
    evaluation's gallery items, so that catalog features are shared through its cache:
    the descriptor index and the photo scorer train on the same catalog."""
    from encoders.evaluation.datasets import split_of
    from encoders.evaluation.shelf_photos import _openclipart_gallery

    everything = _openclipart_gallery(None, 0)
    rows = [j for j, it in enumerate(everything) if split_of(it.item_id) == "train"]
    if size is not None and size < len(rows):
        rows = sorted(random.Random(f"scorer-catalog:{seed}").sample(rows, size))
    return [everything[j] for j in rows]


def _feature_context(cache_dir: str | Path, image_model: str = "efficientnet_lite0") -> Any:
    from encoders.evaluation.variants import Context

    ctx = Context(Path(cache_dir).parent, image_model=image_model)
    ctx.cache = None if cache_dir == "" else ctx.cache
    if ctx.cache is not None:
        ctx.cache.root = Path(cache_dir)
    return ctx


def build_descriptor_index(size: int | None, lists: int, seed: int = 0,
                           out: str | Path | None = None,
                           cache_dir: str | Path = "bench/eval_results/cache",
                           command: str = "") -> dict[str, Any]:
    """Trains the descriptor index's coarse quantiser (`lists` k-means centroids) and 8-bit
    ranges on the catalog descriptors of `train_catalog(size, seed)` (features from the
    evaluation's cache when present); saves the empty trained index and its provenance
    (`<out>.json`)."""
    import faiss

    from encoders.descriptor_index import INDEX_FILE, train_index
    from encoders.evaluation.photo_sets import catalog_local_features

    started = time.perf_counter()
    out = Path(out) if out is not None else INDEX_FILE
    items = train_catalog(size, seed)
    extractor = LocalFeatureExtractor()
    feats, _ = catalog_local_features(_feature_context(cache_dir), items, extractor)
    descriptors = np.concatenate([f.descriptors for f in feats if len(f)])
    faiss.omp_set_num_threads(1)  # k-means threads only spin on a busy 2-core box
    index = train_index(descriptors, lists, seed)
    digest = _sample_digest([it.item_id for it in items])
    info = {"version": f"ivf{lists}-sq8-{digest}", "lists": lists, "items": len(items),
            "descriptors": len(descriptors), "extractor": extractor.version,
            "command": command, "seed": seed, "sample": digest,
            "data": "openclipart train split (encoders.training.data.split_of), the photo "
                    "scorer's catalog sample (train_catalog)",
            "seconds": round(time.perf_counter() - started, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(out))
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return {"out": str(out), **info}


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
                     precision: float = 0.8,
                     cache_dir: str | Path = "bench/eval_results/cache",
                     catalog_size: int | None = None, false_per_photo: float = 0.1,
                     progress: bool = True, command: str = "",
                     image_model: str = "efficientnet_lite0") -> dict[str, Any]:
    """Fits the PhotoScorer on the server's path (VoteMatcher: descriptor vote ->
    verification on the votes -> signals) with photos of `limit` training items searched
    against `catalog_size` train-split catalog images (all of them by default): a third
    single items among catalog clutter, a third restock shelves of 2-5 items, a third
    product photos. Each candidate (most voted + top dense) is one example, positive when
    that product is in the photo. `threshold`: the lowest probability whose precision on
    these examples reaches `precision`; `restock_min_inliers`: the fewest inliers that keep
    false SKUs per restock shelf at or under `false_per_photo`. Catalog features (local and
    dense) come from the evaluation's cache when present."""
    from encoders.evaluation.photo_sets import _dense_views, catalog_local_features
    from encoders.evaluation.photos import PRODUCT_HARD, SHELF, render_scene, render_shelf
    from encoders.evaluation.shelf_photos import _catalog_image, _item_rgba
    from encoders.evaluation.variants import IMAGE_VARIANTS, gallery_features
    from encoders.local_features import (
        SCORER_SIGNALS,
        PhotoScorer,
        fit_logistic,
        scorer_features,
    )
    from encoders.photo_match import VoteMatcher

    started = time.perf_counter()
    ctx = _feature_context(cache_dir, image_model)  # "backbone" is the context's CNN
    catalog = train_catalog(catalog_size, seed)
    extractor = LocalFeatureExtractor()
    feats, _ = catalog_local_features(ctx, catalog, extractor)
    variant = IMAGE_VARIANTS["backbone"]
    dense_gallery, _ = gallery_features(ctx, variant, "openclipart",
                                        [it.item_id for it in catalog],
                                        lambda j: _catalog_image(catalog[j]))
    matcher = VoteMatcher(feats)
    rng = random.Random(f"photo-scorer:{seed}")
    chosen = sorted(rng.sample(range(len(catalog)), min(limit, len(catalog))))
    rows: list[np.ndarray] = []
    labels: list[int] = []
    shelves: list[tuple[dict[int, int], set[int]]] = []  # best inliers per row, present
    for n, index in enumerate(tqdm(chosen, desc="scorer photos", unit="photo",
                                   disable=not progress)):
        prng = random.Random(f"scorer:{seed}:{catalog[index].item_id}")
        kind = n % 3
        if kind == 0:  # one item among catalog clutter
            others = [j for j in prng.sample(range(len(catalog)), 9) if j != index][:8]
            scene = render_scene(_item_rgba(str(catalog[index].path)), prng, SHELF,
                                 [_item_rgba(str(catalog[j].path)) for j in others])
            photo = scene.photo
            present = {index, *(others[k] for k in scene.pasted)}
        elif kind == 1:  # a restock shelf of 2-5 items
            shelf = [index, *prng.sample(range(len(catalog)), prng.randint(1, 4))]
            photo, _ = render_shelf([_item_rgba(str(catalog[j].path)) for j in shelf], prng)
            present = set(shelf)
        else:  # a product photo: the item fills the frame
            photo = render_scene(_item_rgba(str(catalog[index].path)), prng,
                                 PRODUCT_HARD).photo
            present = {index}
        dense = _dense_views(ctx, photo, dense_gallery)
        query = extractor.extract(photo, query=True)
        extra = [int(j) for j in np.argsort(-dense)[:10]]
        cands = matcher.candidates(query, dense, extra)
        for cand in cands:
            rows.append(scorer_features(cand.signals))
            labels.append(int(cand.index in present))
        if kind == 1:
            shelves.append(({c.index: c.verification.inliers for c in cands
                             if c.verification is not None and c.verification.verified},
                            present))
    x = np.stack(rows)
    y = np.array(labels, dtype=np.float64)
    weights, bias = fit_logistic(x, y)
    prob = 1.0 / (1.0 + np.exp(-(x @ weights + bias)))
    threshold = _threshold_for_precision(prob, y, precision)
    restock = _restock_inliers(shelves, false_per_photo)
    scorer = PhotoScorer(weights, bias, threshold, info={
        "command": command, "catalog_items": len(catalog), "photos": len(chosen),
        "examples": len(y), "positives": int(y.sum()),
        "candidates_per_photo": "the 40 most voted (20 verified on their votes) + top 10 "
                                "dense",
        "extractor": extractor.version, "descriptor_index": matcher.index.version,
        "image_model": image_model,
        "dense": variant.version(ctx) + " max over localise.query_views",
        "data": "openclipart train split only (catalog and photos); thirds: photos.SHELF "
                "single items among catalog clutter, render_shelf restock shelves of 2-5 "
                "items, photos.PRODUCT_HARD product photos; seed strings "
                "'scorer:<seed>:<item>'; positive = candidate product is in the photo",
        "threshold_rule": f"lowest probability with precision >= {precision} on these "
                          "examples",
        "restock_rule": f"fewest verified inliers with <= {false_per_photo} false SKUs per "
                        f"restock shelf ({len(shelves)} shelves): {restock}",
        "signals_fitted": list(SCORER_SIGNALS),
        "sample": _sample_digest([catalog[i].item_id for i in chosen]),
        "seconds": round(time.perf_counter() - started, 1),
    }, restock_min_inliers=restock["min_inliers"])
    scorer.save(out)
    verified = prob >= threshold
    trade_off = {}
    for p in (0.5, 0.7, 0.8, 0.9, 0.95, 0.98):
        t = _threshold_for_precision(prob, y, p)
        v = prob >= t
        trade_off[f"precision>={p}"] = {"threshold": t,
                                        "recall": round(float(v[y > 0].mean()), 4)}
    return {"out": str(out), "weights": scorer.weights.round(4).tolist(),
            "trade_off": trade_off, "restock": restock,
            "bias": round(bias, 4), "threshold": threshold,
            "precision_at_threshold": round(float(y[verified].mean()), 4) if verified.any()
            else None,
            "recall_at_threshold": round(float(verified[y > 0].mean()), 4) if y.any() else None,
            **scorer.info}


def _restock_inliers(shelves: Sequence[tuple[dict[int, int], set[int]]],
                     false_per_photo: float) -> dict[str, Any]:
    """The fewest inliers (8..60) at which the products reported on the training shelves
    (verified with at least that many) include at most `false_per_photo` false SKUs per
    shelf; with the item recall and false SKUs it gives, and the whole trade-off."""
    table = {}
    for n in range(8, 61):
        hits = false = items = 0
        for found, present in shelves:
            chosen = {row for row, inl in found.items() if inl >= n}
            hits += len(chosen & present)
            false += len(chosen - present)
            items += len(present)
        table[n] = (round(hits / max(1, items), 4), round(false / max(1, len(shelves)), 4))
    ok = [n for n, (_, f) in table.items() if f <= false_per_photo]
    best = ok[0] if ok else 60
    return {"min_inliers": best, "item_recall": table[best][0],
            "false_skus_per_photo": table[best][1],
            "trade_off": {n: table[n] for n in (8, 10, 12, 15, 20, 25, 30, 40)}}


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
