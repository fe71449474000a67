"""The photo query sets of the `shelf` task, each searched three ways at catalog scale:

Sets (evaluation-split items only; every photo rendered from `photo_rng`-style seeds):
    catalog_clutter     today's shelf photo: the item among other catalog items (SHELF)
    noncatalog_clutter  the item among clutter that is NOT in the catalog: Oxygen icons
                        (Debian oxygen-icon-theme), so the answer is unambiguous
                        (SHELF_HARD: SHELF + occlusion, glare, sensor noise)
    product_photo       the item fills the frame (PRODUCT_HARD: perspective, coloured
                        light, glare, occlusion, blur, noise, JPEG 50-85)
    restock             2-5 catalog items side by side on one shelf photo (SHELF_HARD)

Methods:
    dense     the dense-only path: the pretrained CNN vector, max over localise.query_views
              (restock: proposals + MIN_SCORE / MAX_GAP selection)
    local     the server's vote path without the CNN (encoders.photo_match.VoteMatcher):
              nearest-descriptor vote -> verification on the votes -> PhotoScorer
              (restock: products verified with the scorer's restock_min_inliers)
    combined  local, with the dense vector's top 10 added to the candidates, dense cosine
              in the scorer and ranking the rows no vote reached (search's path)
    dense photo-cnn / combined photo-cnn
              the same two with the CNN trained for photos (its own gallery vectors and
              its own scorer), when the shelf task also runs the photo-cnn variant
"""

from __future__ import annotations

import functools
import itertools
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from encoders.evaluation import metrics
from encoders.evaluation.datasets import ClipartItem, load_item_image
from encoders.evaluation.photos import PRODUCT_HARD, SHELF_HARD, render_scene, render_shelf
from encoders.evaluation.variants import Context
from encoders.local_features import (
    LocalFeatureExtractor,
    LocalFeatures,
    PhotoScorer,
)
from encoders.photo_match import VoteMatcher

__all__ = ["CLUTTER_DIR", "CLUTTER_PACKAGE", "METHODS", "SETS", "catalog_local_features",
           "evaluate"]

CLUTTER_DIR = Path("/usr/share/icons/oxygen/base/256x256")
CLUTTER_PACKAGE = "oxygen-icon-theme"
SETS = ("catalog_clutter", "noncatalog_clutter", "product_photo", "restock")
METHODS = ("dense", "local", "combined")
TOP_DENSE = 10
# Today's restock selection (backend.domain.restock): cosine floor and gap to the best.
RESTOCK_MIN_SCORE = 0.5
RESTOCK_MAX_GAP = 0.4


@functools.lru_cache(maxsize=1)
def clutter_paths() -> tuple[Path, ...]:
    paths = tuple(sorted(CLUTTER_DIR.rglob("*.png"))) if CLUTTER_DIR.is_dir() else ()
    if not paths:
        from encoders.evaluation.datasets import DatasetMissing

        raise DatasetMissing(f"clutter icons not found under {CLUTTER_DIR}: install the "
                             f"Debian package {CLUTTER_PACKAGE}")
    return paths


@functools.lru_cache(maxsize=512)
def _rgba(path: str) -> Image.Image:
    return load_item_image(path)


def _catalog_image(item: ClipartItem) -> Image.Image:
    from encoders.preprocess import to_rgb

    return to_rgb(_rgba(str(item.path)))


# --------------------------------------------------------------------------- the photos


def _photo(kind: str, gallery: Sequence[ClipartItem], index: int, seed: int
           ) -> tuple[Image.Image, frozenset[int]]:
    """The photo of one query and the gallery rows really in it."""
    from encoders.evaluation.shelf_photos import render_query

    item = gallery[index]
    if kind == "catalog_clutter":
        q = render_query(gallery, index, seed)
        return q.photo, q.in_photo
    rng = random.Random(f"eval:{seed}:{kind}:{item.item_id}")
    if kind == "product_photo":
        return render_scene(_rgba(str(item.path)), rng, PRODUCT_HARD).photo, frozenset([index])
    icons = clutter_paths()
    clutter = [_rgba(str(icons[k])) for k in rng.sample(range(len(icons)), 8)]
    scene = render_scene(_rgba(str(item.path)), rng, SHELF_HARD, distractors=clutter)
    return scene.photo, frozenset([index])


def _shelf_photo(gallery: Sequence[ClipartItem], pool: Sequence[int], n: int, seed: int
                 ) -> tuple[Image.Image, frozenset[int]]:
    rng = random.Random(f"eval:{seed}:restock:{n}")
    rows = rng.sample(list(pool), rng.randint(2, 5))
    photo, _ = render_shelf([_rgba(str(gallery[r].path)) for r in rows], rng,
                            style=SHELF_HARD)
    return photo, frozenset(rows)


# ------------------------------------------------------------------- catalog features


def catalog_local_features(ctx: Context, gallery: Sequence[ClipartItem],
                           extractor: LocalFeatureExtractor) -> tuple[list[LocalFeatures], bool]:
    """Local features of every gallery image, cached on disk (one blob file + offsets)."""
    from encoders.evaluation.variants import cache_key

    key = cache_key(f"local-{extractor.version}", "openclipart",
                    [it.item_id for it in gallery])
    blob_path = offsets_path = None
    if ctx.cache is not None:
        blob_path = ctx.cache.root / f"{key}.bin"
        offsets_path = ctx.cache.root / f"{key}.offsets.npy"
        if blob_path.is_file() and offsets_path.is_file():
            data = blob_path.read_bytes()
            offsets = np.load(offsets_path)
            return [LocalFeatures.from_bytes(data[a:b])
                    for a, b in itertools.pairwise(offsets)], True
    cv2.setNumThreads(1)
    from concurrent.futures import ThreadPoolExecutor

    def one(item: ClipartItem) -> bytes:
        return extractor.extract(_catalog_image(item)).to_bytes()

    # OpenCV releases the GIL while detecting: two threads use both cores.
    with ThreadPoolExecutor(2) as pool:
        blobs = list(tqdm(pool.map(one, gallery), total=len(gallery),
                          desc="catalog local features", unit="img"))
    if blob_path is not None and offsets_path is not None:
        blob_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = blob_path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(blobs))
        np.save(offsets_path, np.cumsum([0, *map(len, blobs)]))
        tmp.replace(blob_path)
    return [LocalFeatures.from_bytes(b) for b in blobs], False


# --------------------------------------------------------------------------- the methods


def _dense_views(ctx: Context, photo: Image.Image, g: np.ndarray, encoder: Any = None
                 ) -> np.ndarray:
    from encoders.localise import query_views

    encoder = encoder or ctx.backbone()
    v = np.asarray(encoder.encode(query_views(photo)), dtype=np.float32)
    return np.asarray((v @ g.T).max(axis=0))


def _dense_restock(ctx: Context, photo: Image.Image, g: np.ndarray, encoder: Any = None
                   ) -> set[int]:
    """Today's restock: proposals (isolated regions + windows), top 3 per proposal, best
    proposal per product, cosine floor and gap, overlap suppression, at most 5."""
    from encoders.image import crop_boxes
    from encoders.localise import isolate_box, item_boxes

    regions = [(b, isolate_box(photo, b)) for b in item_boxes(photo)]
    regions += [(b, photo.crop(b)) for b in crop_boxes(photo.width, photo.height,
                                                       (0.9, 0.6), 0.5)]
    encoder = encoder or ctx.backbone()
    v = np.asarray(encoder.encode([r for _, r in regions]), dtype=np.float32)
    sims = v @ g.T
    best: dict[int, tuple[float, tuple[int, int, int, int]]] = {}
    for (box, _), row in zip(regions, sims, strict=True):
        for j in np.argsort(-row)[:3]:
            if int(j) not in best or row[j] > best[int(j)][0]:
                best[int(j)] = (float(row[j]), box)
    ranked = sorted(best.items(), key=lambda kv: -kv[1][0])
    if not ranked:
        return set()
    floor = max(RESTOCK_MIN_SCORE, ranked[0][1][0] - RESTOCK_MAX_GAP)
    chosen: list[tuple[int, tuple[int, int, int, int]]] = []
    for j, (score, box) in ranked:
        if score < floor:
            break
        if all(_overlap(box, c[1]) < 0.3 for c in chosen):
            chosen.append((j, box))
        if len(chosen) == 5:
            break
    return {j for j, _ in chosen}


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


def _local_scores(matcher: VoteMatcher, query: LocalFeatures, dense: np.ndarray | None,
                  scorer: PhotoScorer | None = None) -> tuple[np.ndarray, set[int]]:
    """Scores per gallery row (candidates by probability first, the rest by dense cosine)
    and the rows restock reports (verified with the scorer's restock_min_inliers)."""
    extra = [int(j) for j in np.argsort(-dense)[:TOP_DENSE]] if dense is not None else []
    scorer = scorer or matcher.scorer
    final, cands = matcher.ranking(query, dense, extra, scorer)
    need = scorer.restock_min_inliers if scorer is not None else 12
    chosen = {c.index for c in cands if c.verification is not None
              and c.verification.inliers >= need}
    return final, chosen


# ----------------------------------------------------------------------------- evaluate


def _summary(scores: np.ndarray, targets: Sequence[int], present: Sequence[frozenset[int]],
             seconds: Sequence[float]) -> tuple[dict[str, Any], dict[str, float]]:
    from encoders.evaluation.shelf_photos import _curve

    relevant = np.zeros(scores.shape, dtype=bool)
    relevant[np.arange(len(targets)), list(targets)] = True
    ranked = metrics.ranked_relevance(scores, relevant, 100)
    out = metrics.summarize(ranked, recall_ks=(1, 5, 10), mrr=True)
    top = scores.argmax(axis=1)
    out["in_photo@1"] = round(float(np.mean([int(t) in p for t, p in
                                             zip(top, present, strict=True)])), 4)
    out.update(_timing(seconds))
    return out, _curve(ranked)


def _timing(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"query_ms_median": round(float(np.median(ms)), 1),
            "query_ms_p95": round(float(np.percentile(ms, 95)), 1)}


def evaluate(ctx: Context, gallery: Sequence[ClipartItem], q_index: Sequence[int],
             dense_gallery: np.ndarray | None, seed: int, restock_photos: int = 200,
             sets: Sequence[str] = SETS, methods: Sequence[str] = METHODS,
             extra_dense: dict[str, tuple[Any, np.ndarray]] | None = None,
             extra_scorers: dict[str, PhotoScorer] | None = None
             ) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Every set x method: Recall@1/5/10, MRR, in_photo@1 and query time (restock: item
    recall and false SKUs per photo). Returns (results, Recall@K curves).

    `extra_dense`: more dense methods, name -> (image encoder, its gallery vectors), run
    like `dense` on the same photos (another CNN side by side). `extra_scorers`: for an
    extra dense name "dense X", the scorer fitted with that CNN: adds the method
    "combined X" (search's path with that CNN)."""
    more_dense = dict(extra_dense or {})
    import threadpoolctl

    extractor = LocalFeatureExtractor()
    results: dict[str, Any] = {}
    local = any(m in ("local", "combined") for m in methods)
    matcher: VoteMatcher | None = None
    if local:  # the dense method alone needs no local features
        started = time.perf_counter()
        feats, cached = catalog_local_features(ctx, gallery, extractor)
        scorer = PhotoScorer.load()
        matcher = VoteMatcher(feats, scorer)
        results["catalog"] = {
            "extractor": extractor.version, "descriptor_index": matcher.index.version,
            "descriptors": matcher.index.descriptors,
            "scorer_restock_min_inliers": scorer.restock_min_inliers,
            "from_cache": cached,
            "seconds": round(time.perf_counter() - started, 1),
            "keypoints_mean": round(float(np.mean([len(f) for f in feats])), 1),
            "bytes_per_image_mean": round(float(np.mean(
                [len(f.to_bytes()) for f in feats[:500]])), 1)}
    curves: dict[str, dict[str, float]] = {}
    methods = [m for m in methods if m != "dense" or dense_gallery is not None] + list(more_dense)
    # "combined X" -> (extra dense name, its scorer)
    more_combined = {_combined_name(name): (name, scorer)
                     for name, scorer in (extra_scorers or {}).items()
                     if name in more_dense and matcher is not None}
    methods += list(more_combined)
    dense_needed = dense_gallery is not None
    cv2.setNumThreads(1)
    for kind in sets:
        if kind == "restock":
            continue
        photos = [_photo(kind, gallery, int(i), seed)
                  for i in tqdm(q_index, desc=f"render {kind}", unit="photo", leave=False)]
        scores = {m: np.zeros((len(photos), len(gallery)), np.float32) for m in methods}
        times: dict[str, list[float]] = {m: [] for m in methods}
        for n, (photo, _) in enumerate(tqdm(photos, desc=f"search {kind}", unit="photo")):
            dense = None
            if dense_needed:
                t = time.perf_counter()
                dense = _dense_views(ctx, photo, dense_gallery)  # type: ignore[arg-type]
                dense_s = time.perf_counter() - t
                if "dense" in scores:
                    scores["dense"][n] = dense
                    times["dense"].append(dense_s)
            for name, (encoder, g_extra) in more_dense.items():
                t = time.perf_counter()
                scores[name][n] = _dense_views(ctx, photo, g_extra, encoder)
                times[name].append(time.perf_counter() - t)
            if matcher is None:
                continue
            with threadpoolctl.threadpool_limits(1):
                t = time.perf_counter()
                query = extractor.extract(photo, query=True)
                extract_s = time.perf_counter() - t
                for m in ("local", "combined"):
                    if m not in scores:
                        continue
                    t = time.perf_counter()
                    scores[m][n], _ = _local_scores(matcher, query,
                                                    dense if m == "combined" else None)
                    extra = dense_s if (m == "combined" and dense is not None) else 0.0
                    times[m].append(extract_s + time.perf_counter() - t + extra)
                for m, (name, scorer) in more_combined.items():
                    t = time.perf_counter()
                    scores[m][n], _ = _local_scores(matcher, query, scores[name][n], scorer)
                    times[m].append(extract_s + time.perf_counter() - t + times[name][-1])
        results[kind] = {}
        for m in methods:
            results[kind][m], curves[f"{m} {kind}"] = _summary(
                scores[m], list(q_index), [p for _, p in photos], times[m])
        results[kind]["queries"] = len(photos)
    if "restock" in sets:
        results["restock"] = _restock(ctx, gallery, q_index, dense_gallery, seed,
                                      restock_photos, matcher, extractor, methods,
                                      more_dense, more_combined)
    return results, curves


def _restock(ctx: Context, gallery: Sequence[ClipartItem], pool: Sequence[int],
             dense_gallery: np.ndarray | None, seed: int, n_photos: int,
             matcher: VoteMatcher | None, extractor: LocalFeatureExtractor,
             methods: Sequence[str], extra: dict[str, tuple[Any, np.ndarray]] | None = None,
             more_combined: dict[str, tuple[str, PhotoScorer]] | None = None
             ) -> dict[str, Any]:
    import threadpoolctl

    extra_views: dict[str, tuple[np.ndarray, float]] = {}  # dense name -> (cosines, seconds)
    combined_sources = {name for name, _ in (more_combined or {}).values()}
    found: dict[str, list[tuple[set[int], frozenset[int]]]] = {m: [] for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for n in tqdm(range(n_photos), desc="restock photos", unit="photo"):
        photo, present = _shelf_photo(gallery, pool, n, seed)
        for name, (encoder, g_extra) in (extra or {}).items():
            t = time.perf_counter()
            found[name].append((_dense_restock(ctx, photo, g_extra, encoder), present))
            times[name].append(time.perf_counter() - t)
            if name in combined_sources:
                t = time.perf_counter()
                views = _dense_views(ctx, photo, g_extra, encoder)
                extra_views[name] = (views, time.perf_counter() - t)
        dense = None
        dense_s = 0.0
        if dense_gallery is not None:
            t = time.perf_counter()
            if "dense" in found:
                found["dense"].append((_dense_restock(ctx, photo, dense_gallery), present))
                times["dense"].append(time.perf_counter() - t)
            t = time.perf_counter()
            dense = _dense_views(ctx, photo, dense_gallery)
            dense_s = time.perf_counter() - t
        if matcher is None:
            continue
        with threadpoolctl.threadpool_limits(1):
            t = time.perf_counter()
            query = extractor.extract(photo, query=True)
            extract_s = time.perf_counter() - t
            for m in ("local", "combined"):
                if m not in found:
                    continue
                t = time.perf_counter()
                _, chosen = _local_scores(matcher, query, dense if m == "combined" else None)
                found[m].append((chosen, present))
                times[m].append(extract_s + time.perf_counter() - t
                                + (dense_s if m == "combined" else 0.0))
            for m, (name, scorer) in (more_combined or {}).items():
                t = time.perf_counter()
                views, views_s = extra_views[name]
                _, chosen = _local_scores(matcher, query, views, scorer)
                found[m].append((chosen, present))
                times[m].append(extract_s + time.perf_counter() - t + views_s)
    out: dict[str, Any] = {"photos": n_photos}
    for m in methods:
        pairs = found[m]
        items = sum(len(p) for _, p in pairs)
        hit = sum(len(c & p) for c, p in pairs)
        false = sum(len(c - p) for c, p in pairs)
        out[m] = {"item_recall": round(hit / max(1, items), 4),
                  "false_skus_per_photo": round(false / max(1, len(pairs)), 4),
                  "exact_photos": round(float(np.mean([c == p for c, p in pairs])), 4),
                  **_timing(times[m])}
    return out


def _combined_name(dense_name: str) -> str:
    return "combined " + dense_name.removeprefix("dense ")


def photo_sets_doc() -> dict[str, str]:
    return {"sets": __doc__ or "", "clutter": f"Debian {CLUTTER_PACKAGE}: {CLUTTER_DIR}"}

