"""Cross-merchant duplicate listings: candidate pairs from the vector index, scored with the
match calibration, grouped WITHOUT transitive merging of weak links.

A group only grows when every pair inside it is a strong match. A~B strong and B~C strong
with A~C weak does not make {A, B, C}: the link that would merge through a weak pair goes to
review, with the evidence, for a person to decide."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from backend.domain.match import catalog_attributes
from backend.domain.match_model import (
    VERDICTS,
    MatchCalibration,
    attribute_diffs,
    best_cosine,
    pair_features,
)
from backend.domain.ports import DedupCatalog, DedupPair, ProductReader
from backend.domain.tenants import fold_name
from backend.domain.types import Filters, Product
from backend.domain.vectors import VectorStore

STRONG = 0.9
WEAK = 0.5
_CANDIDATES = 10
_SAME = VERDICTS.index("SAME")

Pair = tuple[str, str]


@dataclass
class PairEvidence:
    probability: float
    image_similarity: float
    text_similarity: float
    diff: dict[str, list[str]]


def pair_key(a: str, b: str) -> Pair:
    return (a, b) if a < b else (b, a)


def group_pairs(probability: dict[Pair, float]) -> tuple[list[set[str]], dict[Pair, str]]:
    """Groups in which every pair is strong, and the pairs left for review with the reason."""
    group_of: dict[str, set[str]] = {}
    review: dict[Pair, str] = {}
    strong = sorted((p for p in probability.items() if p[1] >= STRONG), key=lambda p: -p[1])
    for (a, b), _ in strong:
        ga = group_of.get(a, {a})
        gb = group_of.get(b, {b})
        if ga is gb:
            continue
        weak_link = next(((x, y) for x in ga for y in gb
                          if probability.get(pair_key(x, y), 0.0) < STRONG), None)
        if weak_link is not None:
            weak_p = probability.get(pair_key(*weak_link), 0.0)
            review[(a, b)] = (f"strong, but merging would link {weak_link[0]} and "
                              f"{weak_link[1]} (p={weak_p:.2f})")
            continue
        merged = ga | gb
        for member in merged:
            group_of[member] = merged
    for pair, p in probability.items():
        if WEAK <= p < STRONG:
            review[pair] = "weak match"
    groups = list({id(g): g for g in group_of.values()}.values())
    return groups, review


def find_duplicates(
    catalog: DedupCatalog,
    vectors: VectorStore,
    collection: str,
    calibration: MatchCalibration,
    merchant: str | None = None,
    progress: Callable[[int], object] | None = None,
) -> tuple[str, list[DedupPair]]:
    """Score cross-merchant candidate pairs, group them, save the run; returns its id."""
    collection = vectors.resolve(collection)
    evidence: dict[Pair, PairEvidence] = {}
    wanted = None if merchant is None else fold_name(merchant)  # stored names are canonical
    for batch in catalog.iter_products():
        sources = [p for p in batch if wanted is None or p.merchant == wanted]
        for product in sources:
            _score_candidates(catalog, vectors, collection, calibration, product, evidence)
            if progress:
                progress(1)
    groups, review = group_pairs({k: e.probability for k, e in evidence.items()})
    run_id = uuid.uuid4().hex
    rows: list[DedupPair] = []
    for group in groups:
        group_id = uuid.uuid4().hex
        members = sorted(group)
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                rows.append(_row(a, b, "group", group_id, evidence[(a, b)], "every pair strong"))
    for (a, b), reason in review.items():
        rows.append(_row(a, b, "review", None, evidence[pair_key(a, b)], reason))
    catalog.save_dedup_run(run_id, rows)
    return run_id, rows


def _row(a: str, b: str, status: str, group_id: str | None, e: PairEvidence, reason: str
         ) -> DedupPair:
    return DedupPair(a, b, status, group_id, e.probability, e.image_similarity,
                     e.text_similarity, {"reason": reason, "diff": e.diff})


def _score_candidates(catalog: ProductReader, vectors: VectorStore, collection: str,
                      calibration: MatchCalibration, product: Product,
                      evidence: dict[Pair, PairEvidence]) -> None:
    images = vectors.get_vectors(collection, product.product_id, "image")
    texts = vectors.get_vectors(collection, product.product_id, "text")
    queries = [("image", v) for _, v in images] or [("text", v) for _, v in texts[:1]]
    flt = Filters(exclude_product_ids=[product.product_id])
    candidate_ids = {point.payload.product_id
                     for name, vector in queries
                     for point in vectors.search(collection, name, vector, flt, _CANDIDATES)}
    others = list(catalog.get_products(sorted(candidate_ids)).values())
    image_sims: dict[str, float | None] = {}
    for other in others:
        other_images = vectors.get_vectors(collection, other.product_id, "image")
        image_sims[other.product_id] = (
            best_cosine(np.stack([v for _, v in images]), np.stack([v for _, v in other_images]))
            if images and other_images else None)
    for other in others:
        key = pair_key(product.product_id, other.product_id)
        if other.merchant == product.merchant or key in evidence:
            continue
        image_sim = image_sims[other.product_id]
        rivals = [s for pid, s in image_sims.items() if pid != other.product_id and s is not None]
        other_texts = vectors.get_vectors(collection, other.product_id, "text")
        text_sim = best_cosine(texts[0][1], other_texts[0][1]) if texts and other_texts else 0.0
        diffs = attribute_diffs(catalog_attributes(product), catalog_attributes(other))
        p_same = float(calibration.probabilities(pair_features(
            image_sim, text_sim, diffs, max(rivals) if rivals else None))[0][_SAME])
        if p_same >= WEAK:
            evidence[key] = PairEvidence(
                p_same, image_sim or 0.0, text_sim,
                {d.field: [d.listing_value, d.catalog_value] for d in diffs})
