"""The benchmarks: `fmnist-category`, `shelf` and `text`. Each returns one JSON-ready dict
(metrics per variant, sizes, seeds, timings) with Recall@K curves under "curves" for the
plot. All use real images only (see `datasets`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from encoders.evaluation import bilingual, metrics
from encoders.evaluation.datasets import (
    FMNIST_CLASSES,
    ClipartItem,
    dominant_colour,
    fmnist_image,
    load_fashion_mnist,
    subsample,
)
from encoders.evaluation.shelf_photos import (
    CURVE_KS,
    _catalog_image,
    _curve,
    _eval_queries,
    _item_rgba,
    _openclipart_gallery,
    render_query,
)
from encoders.evaluation.variants import (
    IMAGE_VARIANTS,
    Context,
    Fused,
    ImageVariant,
    Timer,
    Unavailable,
    batched,
    cache_key,
    gallery_features,
    text_variants,
)
from encoders.localise import query_views

__all__ = ["CURVE_KS", "PHOTO_VARIANT", "fmnist_category", "shelf", "text"]

# The shelf task's photo sets (encoders.evaluation.photo_sets): a variant name of its own.
PHOTO_VARIANT = "photo"
# The photo sets with the dense method only (no local features to extract).
PHOTO_DENSE_VARIANT = "photo-dense"

SPLIT_RULE = "eval iff int(sha1(path relative to the image root)) % 5 == 0 (fixed, seedless)"


def _variants(names: Sequence[str] | None) -> list[ImageVariant]:
    names = list(IMAGE_VARIANTS) if names is None else list(names)
    return [IMAGE_VARIANTS[n] for n in names if n not in (PHOTO_VARIANT, PHOTO_DENSE_VARIANT)]


def _ranked(scores: np.ndarray, relevant: np.ndarray, k: int | None = None) -> np.ndarray:
    return metrics.ranked_relevance(scores, relevant, k)


# ------------------------------------------------------------------------ fmnist-category


def fmnist_category(ctx: Context, *, queries: int = 500, gallery: int = 5000, seed: int = 0,
                    variants: Sequence[str] | None = None) -> dict[str, Any]:
    """Fashion-MNIST test images query a gallery of train images; relevant = same class."""
    total = Timer()
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    qi = subsample(len(test_y), queries, seed, "fmnist-queries")
    gi = subsample(len(train_y), gallery, seed, "fmnist-gallery")
    q_labels, g_labels = test_y[qi], train_y[gi]
    relevant = metrics.label_relevance(q_labels, g_labels)
    n_relevant = relevant.sum(axis=1)
    gallery_ids = [f"train/{i}" for i in gi]
    query_images = [fmnist_image(test_x[i]) for i in qi]

    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    curves: dict[str, dict[str, float]] = {}
    for variant in _variants(variants):
        try:
            variant.check(ctx)
        except Unavailable as exc:
            skipped[variant.name] = str(exc)
            continue
        timer = Timer()
        g, cached = gallery_features(ctx, variant, "fmnist-train", gallery_ids,
                                     lambda j: fmnist_image(train_x[gi[j]]))
        gallery_s = timer.seconds()
        q = batched(functools.partial(variant.embed, ctx), query_images,
                    f"{variant.name} queries")
        ranked = _ranked(q @ g.T, relevant, 100)
        summary = metrics.summarize(ranked, precision_ks=(1, 10), map_ks=(100,),
                                    n_relevant=n_relevant, labels=q_labels,
                                    names=FMNIST_CLASSES)
        summary.update(seconds=timer.seconds(), gallery_seconds=gallery_s,
                       gallery_from_cache=cached)
        results[variant.name] = summary
        curves[variant.name] = _curve(ranked)
    return {
        "task": "fmnist-category",
        "data": "Debian dataset-fashion-mnist: queries from t10k, gallery from train",
        "sizes": {"queries": len(qi), "gallery": len(gi)},
        "seeds": {"subsample": seed},
        "relevance": "gallery images of the query's class",
        "metrics": "P@1, P@10, mAP@100 (AP normalised by min(100, relevant items))",
        "variants": results,
        "skipped": skipped,
        "curves": curves,
        "seconds": total.seconds(),
    }


# --------------------------------------------------------------------------------- shelf


def _shelf_metrics(scores: np.ndarray, targets: np.ndarray,
                   in_photo: Sequence[frozenset[int]]) -> tuple[dict[str, Any], dict]:
    relevant = np.zeros(scores.shape, dtype=bool)
    relevant[np.arange(len(targets)), targets] = True
    ranked = _ranked(scores, relevant)
    summary = metrics.summarize(ranked, recall_ks=(1, 5, 10), mrr=True)
    # The distractors are catalog items too: a top hit on one of them finds a product that
    # IS in the photo, just not the one the query was made for.
    top = scores.argmax(axis=1)
    summary["in_photo@1"] = round(float(np.mean(
        [int(t) in present for t, present in zip(top, in_photo, strict=True)])), 4)
    return summary, _curve(ranked)


def shelf(ctx: Context, *, limit: int | None = None, queries: int | None = 500,
          crop_queries: int | None = 100, seed: int = 0,
          variants: Sequence[str] | None = None, restock_photos: int = 200
          ) -> dict[str, Any]:
    """Photo-like shelf renderings of evaluation items query the catalog images; with the
    `photo` variant, also the photo sets of `photo_sets` (dense / local / combined)."""
    total = Timer()
    gallery = _openclipart_gallery(limit, seed)
    q_index = np.array(_eval_queries(gallery, queries, seed), dtype=np.int64)
    ids = [it.item_id for it in gallery]
    scenes = [render_query(gallery, int(i), seed)
              for i in tqdm(q_index, desc="render photos", unit="photo", leave=False)]
    photos = [s.photo for s in scenes]
    present = [s.in_photo for s in scenes]
    true_boxes = [s.photo.crop(s.box) for s in scenes]
    n_crop = len(photos) if crop_queries is None else min(crop_queries, len(photos))
    views = [query_views(p) for p in photos]
    flat_views = [v for vs in views for v in vs]
    owner = np.array([n for n, vs in enumerate(views) for _ in vs], dtype=np.int64)

    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    curves: dict[str, dict[str, float]] = {}
    for variant in _variants(variants):
        try:
            variant.check(ctx)
        except Unavailable as exc:
            skipped[variant.name] = str(exc)
            continue
        timer = Timer()
        texts = [it.title for it in gallery] if isinstance(variant, Fused) else None
        g, cached = gallery_features(ctx, variant, "openclipart", ids,
                                     lambda j: _catalog_image(gallery[j]), texts)
        out: dict[str, Any] = {"gallery_seconds": timer.seconds(), "gallery_from_cache": cached}

        t = Timer()
        q = batched(functools.partial(variant.embed, ctx), photos, f"{variant.name} whole")
        whole_scores = q @ g.T
        out["whole"], curves[f"{variant.name} whole"] = _shelf_metrics(
            whole_scores, q_index, present)
        out["whole"]["seconds"] = t.seconds()

        t = Timer()
        v = batched(functools.partial(variant.embed, ctx), flat_views,
                    f"{variant.name} views")
        view_scores = np.full((len(photos), len(gallery)), -np.inf, dtype=np.float32)
        np.maximum.at(view_scores, owner, v @ g.T)
        out["views"], curves[f"{variant.name} views"] = _shelf_metrics(
            view_scores, q_index, present)
        out["views"]["seconds"] = t.seconds()

        t = Timer()
        b = batched(functools.partial(variant.embed, ctx), true_boxes,
                    f"{variant.name} true boxes")
        out["true_box"], curves[f"{variant.name} true_box"] = _shelf_metrics(
            b @ g.T, q_index, present)
        out["true_box"]["seconds"] = t.seconds()

        if variant.supports_crops and n_crop > 0:
            t = Timer()
            crop_scores = np.stack([
                (variant.embed_crops(ctx, photo) @ g.T).max(axis=0)
                for photo in tqdm(photos[:n_crop], desc=f"{variant.name} crops",
                                  unit="photo", leave=False)
            ])
            out["crops"], curves[f"{variant.name} crops"] = _shelf_metrics(
                crop_scores, q_index[:n_crop], present[:n_crop])
            out["crops"]["queries"] = n_crop
            out["crops"]["whole_on_same_queries"], _ = _shelf_metrics(
                whole_scores[:n_crop], q_index[:n_crop], present[:n_crop])
            out["crops"]["seconds"] = t.seconds()
        out["seconds"] = timer.seconds()
        results[variant.name] = out
    photo_results: dict[str, Any] | None = None
    dense_only = variants is not None and PHOTO_DENSE_VARIANT in variants
    if variants is None or PHOTO_VARIANT in variants or dense_only:
        from encoders.evaluation import photo_sets

        timer = Timer()
        backbone = IMAGE_VARIANTS["backbone"]
        g, _ = gallery_features(ctx, backbone, "openclipart", ids,
                                lambda j: _catalog_image(gallery[j]))
        # The CNN trained for photos, side by side on the same photos when it runs too.
        from encoders.local_features import PhotoScorer, scorer_file

        extra: dict[str, tuple[Any, np.ndarray]] = {}
        scorers: dict[str, PhotoScorer] = {}
        tuned = IMAGE_VARIANTS["photo-cnn"]
        if variants is not None and tuned.name in variants and tuned.name in results:
            g_tuned, _ = gallery_features(ctx, tuned, "openclipart", ids,
                                          lambda j: _catalog_image(gallery[j]))
            extra["dense photo-cnn"] = (ctx.image_encoder("efficientnet_lite0_photo"), g_tuned)
            scorers = {"dense photo-cnn": PhotoScorer.load(scorer_file("efficientnet_lite0_photo"))}
        photo_results, photo_curves = photo_sets.evaluate(
            ctx, gallery, [int(i) for i in q_index], g, seed, restock_photos,
            methods=("dense",) if dense_only and PHOTO_VARIANT not in (variants or ())
            else photo_sets.METHODS, extra_dense=extra, extra_scorers=scorers)
        photo_results["seconds"] = timer.seconds()
        photo_results["about"] = photo_sets.photo_sets_doc()
        curves.update(photo_curves)
    return {
        "task": "shelf",
        "photo_sets": photo_results,
        "data": "Debian openclipart-png; gallery = catalog images (alpha on white); queries = "
                "photos.render_photo(item, photo_rng(item, seed), photos.SHELF, distractors = "
                "up to 8 other gallery items) of evaluation-split items only",
        "sizes": {"gallery": len(gallery), "queries": len(photos), "crop_queries": n_crop,
                  "views_per_query": round(len(flat_views) / max(1, len(photos)), 3)},
        "seeds": {"eval_photo_seed": seed, "photo_rng": "random.Random(f'eval:{seed}:{item}')",
                  "gallery_sample": seed if limit else None, "split": SPLIT_RULE},
        "strategies": {
            "whole": "one embedding of the whole photo",
            "views": "max similarity over localise.query_views (photo + isolated item)",
            "crops": "max similarity over the whole photo + multi-scale square crops "
                     "(ProductEncoder.encode_crops), on the first crop_queries queries",
            "true_box": "one embedding of the item's true box cut from the photo: what "
                        "perfect localisation would give (an upper bound for the others)",
        },
        "relevance": "exactly one relevant gallery item: the photographed item; "
                     "in_photo@1 = share of queries whose top hit is that item or one of "
                     "the distractors pasted into the photo (also catalog items)",
        "variants": results,
        "skipped": skipped,
        "curves": curves,
        "seconds": total.seconds(),
    }


# ---------------------------------------------------------------------------------- text


def _embed_cached(ctx: Context, encoder: Any, name: str, tag: str, texts: list[str]
                  ) -> np.ndarray:
    key = cache_key(f"text-{name}", tag, texts)
    docs = ctx.cache.get(key) if ctx.cache is not None else None
    if docs is None or docs.shape[0] != len(texts):
        docs = batched(encoder.encode, texts, f"{name} {tag}", batch=128)
        if ctx.cache is not None:
            ctx.cache.put(key, docs)
    return np.asarray(docs)


def _category_relevance(gallery: Sequence[ClipartItem], keys: Sequence[str]) -> np.ndarray:
    return np.array([[it.category == k or it.category.startswith(k + "/") for it in gallery]
                     for k in keys], dtype=bool)


def text(ctx: Context, *, limit: int | None = None, queries: int | None = 300, seed: int = 0,
         variants: Sequence[str] | None = None,
         retrieval: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
         retrieval_encoder: str = "multilingual") -> dict[str, Any]:
    """Text -> product on openclipart, English and Chinese twins. `retrieval` (given by the
    backend, which this package does not import) adds rows measured through the vector
    store, with `retrieval_encoder`'s vectors."""
    total = Timer()
    gallery = _openclipart_gallery(limit, seed)
    titles = [it.title for it in gallery]
    ids = [it.item_id for it in gallery]

    cat_keys = sorted({k for it in gallery if (k := bilingual.category_key(it.category))})
    cat_pairs = [bilingual.category_query(k) for k in cat_keys]

    item_rows: list[int] = []
    item_keys: list[str] = []
    item_pairs: list[tuple[str, str]] = []
    for i in _eval_queries(gallery, queries, seed):
        it = gallery[i]
        key = bilingual.category_key(it.category)
        if key is None:
            continue
        colour = dominant_colour(_item_rgba(str(it.path)))
        pair = bilingual.item_query(it.category, colour)
        assert pair is not None
        item_rows.append(i)
        item_keys.append(key)
        item_pairs.append(pair)
    title_rows = _eval_queries(gallery, queries, seed)

    sets: dict[str, tuple[list[str], list[str] | None, np.ndarray]] = {
        "category": ([p[0] for p in cat_pairs], [p[1] for p in cat_pairs],
                     _category_relevance(gallery, cat_keys)),
        "item": ([p[0] for p in item_pairs], [p[1] for p in item_pairs],
                 _category_relevance(gallery, item_keys)),
    }
    title_rel = np.zeros((len(title_rows), len(gallery)), dtype=bool)
    title_rel[np.arange(len(title_rows)), title_rows] = True
    sets["title"] = ([titles[i] for i in title_rows], None, title_rel)

    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    curves: dict[str, dict[str, float]] = {}
    retrieval_sets: dict[str, str] = {}

    def evaluate(name: str, docs: np.ndarray, encode: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for set_name, (en, zh, rel) in sets.items():
            if not en:
                continue
            entry: dict[str, Any] = {}
            rankings = {}
            for lang, texts_ in (("en", en), ("zh", zh)):
                if texts_ is None:
                    continue
                scores = encode(texts_) @ docs.T
                ranked = _ranked(scores, rel)
                entry[lang] = metrics.summarize(ranked, recall_ks=(1, 10), precision_ks=(10,),
                                                mrr=True)
                rankings[lang] = metrics.rank(scores, 10)
                curves[f"{name} {set_name}-{lang}"] = _curve(ranked)
            if "zh" in rankings:
                entry["zh_en_overlap@10"] = round(float(metrics.topk_overlap(
                    rankings["zh"], rankings["en"], 10).mean()), 4)
            entry["queries"] = len(en)
            out[set_name] = entry
        return out

    for name in text_variants():
        timer = Timer()
        try:
            encoder = ctx.text_encoder(name)
        except Exception as exc:  # a registered encoder that cannot load here
            skipped[name] = f"{type(exc).__name__}: {exc}"
            continue
        key = cache_key(f"text-{name}", "openclipart-titles", ids)
        docs = ctx.cache.get(key) if ctx.cache is not None else None
        if docs is None or docs.shape[0] != len(ids):
            docs = batched(encoder.encode, titles, f"{name} titles", batch=128)
            if ctx.cache is not None:
                ctx.cache.put(key, docs)
        results[name] = evaluate(name, docs, encoder.encode_query)
        results[name]["gallery"] = "title text of each product (text -> text)"
        results[name]["seconds"] = timer.seconds()
        if retrieval is not None and name == retrieval_encoder:
            extra_sets = retrieval({
                "items": gallery, "sets": sets, "docs": docs, "encode": encoder.encode_query,
                "embed_docs": lambda texts, tag, enc=encoder, n=name: _embed_cached(
                    ctx, enc, n, tag, texts),
                "query_rows": title_rows, "seed": seed})
            results.update(extra_sets["variants"])
            retrieval_sets = extra_sets["query_sets"]

    for variant in _variants(variants):
        if not isinstance(variant, Fused):
            skipped[variant.name] = "image-only variant: cannot embed a text query"
            continue
        try:
            variant.check(ctx)
        except Unavailable as exc:
            skipped[variant.name] = str(exc)
            continue
        timer = Timer()
        g, _ = gallery_features(ctx, variant, "openclipart", ids,
                                lambda j: _catalog_image(gallery[j]), titles)
        results[variant.name] = evaluate(
            variant.name, g, lambda texts_, v=variant: v.embed_texts(ctx, texts_))
        results[variant.name]["gallery"] = "fused vector of image + title (text -> fused)"
        results[variant.name]["seconds"] = timer.seconds()

    return {
        "task": "text",
        "data": "Debian openclipart-png; gallery = products with their title from the file "
                "name (category withheld from the product text); queries in English and "
                "their Chinese twins from encoders.evaluation.bilingual",
        "sizes": {"gallery": len(gallery), "category_queries": len(cat_keys),
                  "item_queries": len(item_rows), "title_queries": len(title_rows)},
        "seeds": {"query_sample": seed, "gallery_sample": seed if limit else None,
                  "split": SPLIT_RULE},
        "query_sets": {
            "category": "the category's name (e.g. 'bird' / '鸟'), one per category key; "
                        "relevant = every gallery item in that category (or below it)",
            "item": "'<colour> <category>' of an evaluation item (e.g. 'red bird' / "
                    "'红色的鸟'; colour measured from the pixels); relevant = every gallery "
                    "item in the item's category",
            "title": "the evaluation item's own title, English only; relevant = that item",
            **retrieval_sets,
        },
        "metrics": "recall@K = share of queries with a relevant item in the top K; P@10; "
                   "MRR; zh_en_overlap@10 = mean |top10(zh) ∩ top10(en)| / 10",
        "variants": results,
        "retrieval_encoder": retrieval_encoder if retrieval is not None else None,
        "skipped": skipped,
        "curves": curves,
        "seconds": total.seconds(),
    }
