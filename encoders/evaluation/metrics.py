"""Retrieval metrics over ranked relevance.

Everything starts from a boolean matrix `ranked` of shape (Q, L): `ranked[q, r]` says whether
the item at rank r+1 of query q's ranking is relevant. Build it from a score matrix with
`ranked_relevance(scores, relevant)` (a stable ranking: ties go to the lower gallery index),
or directly from hand-made rankings. Each metric returns one value per query, so that
overall means and per-class breakdowns come from the same numbers.

Definitions (K is the cut-off):
- recall@K: 1 if at least one relevant item is in the top K, else 0 (the hit rate used by
  image-retrieval benchmarks; equal to the textbook recall when a query has one relevant
  item).
- precision@K: relevant items in the top K / K.
- MRR: mean of 1 / rank of the first relevant item (0 when none is ranked).
- AP@K: sum over relevant ranks r <= K of precision@r, divided by min(K, number of relevant
  items) (0 when a query has no relevant item); mAP@K is its mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "average_precision_at_k",
    "label_relevance",
    "per_class",
    "precision_at_k",
    "rank",
    "ranked_relevance",
    "recall_at_k",
    "recall_curve",
    "reciprocal_rank",
    "summarize",
    "topk_overlap",
]


def rank(scores: np.ndarray, k: int | None = None) -> np.ndarray:
    """(Q, G) scores -> (Q, min(k, G)) gallery indices, best first; ties keep index order."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (queries, gallery), got shape {scores.shape}")
    order = np.argsort(-scores, axis=1, kind="stable")
    return order if k is None else order[:, :k]


def label_relevance(query_labels: Sequence[object] | np.ndarray,
                    gallery_labels: Sequence[object] | np.ndarray) -> np.ndarray:
    """(Q, G) bool: gallery item g is relevant to query q when their labels are equal."""
    q = np.asarray(query_labels, dtype=object)[:, None]
    g = np.asarray(gallery_labels, dtype=object)[None, :]
    return np.asarray(q == g, dtype=bool)


def ranked_relevance(scores: np.ndarray, relevant: np.ndarray, k: int | None = None
                     ) -> np.ndarray:
    """(Q, G) scores and (Q, G) bool relevance -> (Q, L) bool relevance in ranked order
    (L = k, or G for the full ranking, needed for an exact MRR)."""
    relevant = np.asarray(relevant, dtype=bool)
    if relevant.shape != np.shape(scores):
        raise ValueError(f"relevance {relevant.shape} does not match scores {np.shape(scores)}")
    order = rank(scores, k)
    return np.take_along_axis(relevant, order, axis=1)


def _check(ranked: np.ndarray, k: int) -> np.ndarray:
    ranked = np.asarray(ranked, dtype=bool)
    if ranked.ndim != 2:
        raise ValueError(f"ranked relevance must be (queries, ranks), got {ranked.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return ranked


def recall_at_k(ranked: np.ndarray, k: int) -> np.ndarray:
    """Per query: 1.0 if a relevant item is in the top k."""
    ranked = _check(ranked, k)
    return np.asarray(ranked[:, :k].any(axis=1), dtype=np.float64)


def precision_at_k(ranked: np.ndarray, k: int) -> np.ndarray:
    """Per query: relevant items in the top k / k (a ranking shorter than k counts the
    missing ranks as not relevant)."""
    ranked = _check(ranked, k)
    return np.asarray(ranked[:, :k].sum(axis=1) / float(k), dtype=np.float64)


def reciprocal_rank(ranked: np.ndarray) -> np.ndarray:
    """Per query: 1 / (rank of the first relevant item), 0 when none is in the ranking."""
    ranked = _check(ranked, 1)
    hit = ranked.any(axis=1)
    first = ranked.argmax(axis=1) + 1
    return np.where(hit, 1.0 / first, 0.0)


def average_precision_at_k(ranked: np.ndarray, k: int,
                           n_relevant: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Per query: AP truncated at k, normalised by min(k, n_relevant). `n_relevant` is the
    number of relevant items in the whole gallery; by default those in `ranked` (right when
    `ranked` is the full ranking)."""
    ranked = _check(ranked, k)
    top = ranked[:, :k].astype(np.float64)
    hits = np.cumsum(top, axis=1)
    ranks = np.arange(1, top.shape[1] + 1, dtype=np.float64)
    summed = (top * hits / ranks).sum(axis=1)
    total = ranked.sum(axis=1) if n_relevant is None else np.asarray(n_relevant)
    denom = np.minimum(k, total).astype(np.float64)
    return np.divide(summed, denom, out=np.zeros_like(summed), where=denom > 0)


def recall_curve(ranked: np.ndarray, ks: Iterable[int]) -> dict[int, float]:
    """Mean recall@K for each K (for the Recall@K plots)."""
    return {int(k): float(recall_at_k(ranked, k).mean()) for k in ks}


def per_class(values: np.ndarray, labels: Sequence[object] | np.ndarray,
              names: Sequence[str] | None = None) -> dict[str, float]:
    """Mean of per-query `values` for each label (keys: names[label] when given)."""
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels, dtype=object)
    out: dict[str, float] = {}
    for label in sorted(set(labels.tolist()), key=str):
        key = names[int(label)] if names is not None else str(label)
        out[key] = float(values[labels == label].mean())
    return out


def summarize(
    ranked: np.ndarray,
    *,
    recall_ks: Sequence[int] = (),
    precision_ks: Sequence[int] = (),
    map_ks: Sequence[int] = (),
    mrr: bool = False,
    n_relevant: Sequence[int] | np.ndarray | None = None,
    labels: Sequence[object] | np.ndarray | None = None,
    names: Sequence[str] | None = None,
    digits: int = 4,
) -> dict[str, object]:
    """Overall means of the requested metrics, and `by_class` means when labels are given."""
    per_query: dict[str, np.ndarray] = {}
    for k in recall_ks:
        per_query[f"recall@{k}"] = recall_at_k(ranked, k)
    for k in precision_ks:
        per_query[f"P@{k}"] = precision_at_k(ranked, k)
    for k in map_ks:
        per_query[f"mAP@{k}"] = average_precision_at_k(ranked, k, n_relevant)
    if mrr:
        per_query["MRR"] = reciprocal_rank(ranked)
    out: dict[str, object] = {
        name: round(float(v.mean()), digits) if len(v) else 0.0
        for name, v in per_query.items()
    }
    if labels is not None:
        by_class: dict[str, dict[str, float]] = {}
        for name, v in per_query.items():
            for cls, mean in per_class(v, labels, names).items():
                by_class.setdefault(cls, {})[name] = round(mean, digits)
        out["by_class"] = by_class
    return out


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Per row: |top-k of a ∩ top-k of b| / k, for two (Q, >=k) rankings (index arrays)."""
    a = np.asarray(a)[:, :k]
    b = np.asarray(b)[:, :k]
    if a.shape != b.shape:
        raise ValueError(f"rankings differ in shape: {a.shape} vs {b.shape}")
    return np.array([len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a, b, strict=True)],
                    dtype=np.float64)
