"""Labelled listing/catalog pairs built from the catalog itself, the calibration fit on them,
and precision / recall / F1 per verdict on held-out items (`prodsearch eval --task match`).

- SAME: the item re-photographed (phone-like photo) and re-titled, same attributes;
- VARIANT: re-photographed with the same title but another size or material, or recoloured
  (hue-shifted photo and another colour);
- DIFFERENT: a photo of another item sold under THIS item's title and attributes (same
  title, other product), and a photo of the visually closest other item under its own title.
Each listing leaves out some attributes at random, as real listings do."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from backend.demo_catalog import MATERIALS, SIZES
from backend.domain.match_model import (
    VERDICTS,
    MatchCalibration,
    attribute_diffs,
    best_cosine,
    pair_features,
)
from backend.domain.ports import VectorEncoder
from backend.domain.types import Product
from encoders.evaluation.photos import EASY, render_photo
from encoders.localise import query_views
from encoders.preprocess import load_image_file

SAME, VARIANT, DIFFERENT = range(3)
_COLOURS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange")
_FILLER = ("new", "original", "genuine", "classic", "premium", "free shipping", "sale")


@dataclass
class ListingCase:
    photo: Image.Image
    title: str
    attributes: dict[str, str]
    target: int  # index of the catalog product it is compared with
    label: int


def retitle(title: str, rng: random.Random) -> str:
    """Another title for the same product: reordered, a word dropped, sales filler added."""
    words = title.split()
    if len(words) > 2 and rng.random() < 0.5:
        words.pop(rng.randrange(len(words)))
    rng.shuffle(words)
    words.insert(rng.randrange(len(words) + 1), rng.choice(_FILLER))
    return " ".join(words).lower()


def hue_shift(image: Image.Image, degrees: int) -> Image.Image:
    rgba = image.convert("RGBA")
    h, s, v = rgba.convert("RGB").convert("HSV").split()
    h = h.point(lambda x: (x + degrees * 255 // 360) % 256)
    out = Image.merge("HSV", (h, s, v)).convert("RGB").convert("RGBA")
    out.putalpha(rgba.getchannel("A"))
    return out


def _attrs(product: Product) -> dict[str, str]:
    return {"size": product.size, "material": product.material, "colour": product.colour,
            "brand": product.brand}


def partial(attrs: dict[str, str], rng: random.Random, keep: str = "") -> dict[str, str]:
    """Listings often leave attributes out: drop each (but `keep`) with probability 1/2, so
    that the verdict cannot lean on attribute differences alone."""
    return {k: v if k == keep or rng.random() < 0.5 else "" for k, v in attrs.items()}


def build_cases(products: list[Product], images: list[Image.Image], nearest: list[int],
                rng: random.Random) -> list[ListingCase]:
    cases: list[ListingCase] = []
    for i, product in enumerate(products):
        attrs = _attrs(product)
        photo = render_photo(images[i], rng, EASY)[0]
        cases.append(ListingCase(photo, retitle(product.title, rng), partial(attrs, rng), i,
                                 SAME))

        changed = dict(attrs)
        kind = rng.choice(("size", "material", "colour"))
        source = images[i]
        if kind == "size":
            changed["size"] = rng.choice([s for s in SIZES if s != product.size])
        elif kind == "material":
            changed["material"] = rng.choice([m for m in MATERIALS if m != product.material])
        else:
            changed["colour"] = rng.choice([c for c in _COLOURS if c != product.colour])
            source = hue_shift(source, rng.choice((90, 150, 210)))
        cases.append(ListingCase(render_photo(source, rng, EASY)[0], product.title,
                                 partial(changed, rng, keep=kind), i, VARIANT))

        # Another product under this one's title, with this one's attributes or none: the
        # photo is what tells them apart.
        other = rng.choice([j for j in range(len(products)) if j != i])
        cases.append(ListingCase(render_photo(images[other], rng, EASY)[0], product.title,
                                 partial(attrs, rng), i, DIFFERENT))
        close = nearest[i]
        cases.append(ListingCase(render_photo(images[close], rng, EASY)[0],
                                 products[close].title, partial(_attrs(products[close]), rng),
                                 i, DIFFERENT))
    return cases


def case_features(cases: list[ListingCase], products: list[Product],
                  catalog_image: np.ndarray, catalog_text: np.ndarray,
                  encoder: VectorEncoder, progress: Callable[[int], object] | None = None
                  ) -> np.ndarray:
    """Features exactly as MatchService computes them: best cosine over the listing photo's
    views, cosine of texts, attribute differences."""
    rows = []
    for case in cases:
        views = query_views(case.photo)
        text = " . ".join(p for p in (case.title, case.attributes["brand"],
                                      case.attributes["colour"], case.attributes["material"]) if p)
        encoded = encoder.encode_many([*views, None], [None] * len(views) + [text])
        view_sims = (np.stack([e["image"] for e in encoded[:-1]]) @ catalog_image.T).max(axis=0)
        image_sim = float(view_sims[case.target])
        best_other = float(np.delete(view_sims, case.target).max())
        text_sim = best_cosine(encoded[-1]["text"], catalog_text[case.target])
        diffs = attribute_diffs(case.attributes, _attrs(products[case.target]))
        rows.append(pair_features(image_sim, text_sim, diffs, best_other))
        if progress:
            progress(1)
    return np.stack(rows)


@dataclass
class MatchEvaluation:
    calibration: MatchCalibration
    report: dict[str, object]


def evaluate_matching(products: list[Product], encoder: VectorEncoder, seed: int = 17,
                      progress: Callable[[int], object] | None = None) -> MatchEvaluation:
    """Fit the calibration on 80% of the items and report per-verdict metrics on the rest."""
    rng = random.Random(seed)
    images = [load_image_file(p.images[0].uri) for p in products]
    catalog = encoder.encode_many(images, [p.text_for_encoding() for p in products])
    catalog_image = np.stack([c["image"] for c in catalog])
    catalog_text = np.stack([c["text"] for c in catalog])
    sims = catalog_image @ catalog_image.T
    np.fill_diagonal(sims, -2.0)
    nearest = [int(j) for j in sims.argmax(axis=1)]

    cases = build_cases(products, images, nearest, rng)
    features = case_features(cases, products, catalog_image, catalog_text, encoder, progress)
    labels = np.array([c.label for c in cases])
    held_out = np.array([c.target % 5 == 0 for c in cases])  # items, not pairs, are split
    calibration = MatchCalibration.fit(features[~held_out], labels[~held_out],
                                       encoder.model_version)
    probs = calibration.probabilities(features[held_out])
    predicted = probs.argmax(axis=1)
    truth = labels[held_out]
    per_verdict: dict[str, dict[str, float]] = {}
    for k, name in enumerate(VERDICTS):
        tp = int(((predicted == k) & (truth == k)).sum())
        fp = int(((predicted == k) & (truth != k)).sum())
        fn = int(((predicted != k) & (truth == k)).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_verdict[name] = {"precision": round(precision, 4), "recall": round(recall, 4),
                             "f1": round(f1, 4), "support": int((truth == k).sum())}
    confidence = probs.max(axis=1)
    report: dict[str, object] = {
        "task": "match",
        "model_version": encoder.model_version,
        "items": len(products),
        "pairs_train": int((~held_out).sum()),
        "pairs_held_out": int(held_out.sum()),
        "seed": seed,
        "per_verdict": per_verdict,
        "accuracy": round(float((predicted == truth).mean()), 4),
        "mean_confidence": round(float(confidence.mean()), 4),
        "expected_calibration_error": round(_ece(confidence, predicted == truth), 4),
    }
    return MatchEvaluation(calibration, report)


def _ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |accuracy - confidence| averaged over confidence bins."""
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for low, high in itertools.pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)
