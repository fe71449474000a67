"""Held-out figures for match calibration by k-fold over items: every sampled item is held
out exactly once, predicted by a model fitted on the other folds' items only, and the
held-out predictions of all folds are pooled. With a few dozen items a single 1-in-5 split
measures on a handful of listings (one listing moved F1 by 0.04); pooling the folds
measures on every listing at the cost of k cheap fits (the scoring, which is the slow part,
is done once).

Items (never single listings) are split, by a hash of the product id: stable whatever the
sample's order, and a product's listings never sit on both sides of a fold."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import numpy as np

FOLDS = 5

# Fits on (features, labels) and returns a function giving class probabilities per row.
Fitter = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]


def fold_of(product_id: str, folds: int = FOLDS) -> int:
    return hashlib.sha1(product_id.encode()).digest()[0] % folds


def item_folds(product_ids: list[str], folds: int = FOLDS) -> np.ndarray:
    """The fold of each item by the hash of its id; when the hash leaves fewer than two
    folds used (tiny samples), by position instead, so that there is always something to
    fit on and something to hold out."""
    by_hash = np.array([fold_of(pid, folds) for pid in product_ids], dtype=int)
    if len(set(by_hash.tolist())) >= 2:
        return by_hash
    return np.arange(len(product_ids)) % folds


def splits(fold_ids: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(fold, fit rows, held-out rows) for each fold that holds rows; `fold_ids` gives each
    row's fold (the fold of the item the row belongs to)."""
    for fold in sorted(set(fold_ids.tolist())):
        test = fold_ids == fold
        yield fold, ~test, test


def cross_validated(features: np.ndarray, labels: np.ndarray, fold_ids: np.ndarray,
                    fit: Fitter, fit_rows: np.ndarray | None = None) -> np.ndarray:
    """Every row's probabilities from the model fitted on the other folds' rows.
    `fit_rows` narrows what may be fitted on (the baseline fits on easy photos only); a
    held-out row is predicted whether or not it could have been fitted on."""
    allowed = np.ones(len(labels), dtype=bool) if fit_rows is None else fit_rows
    out = np.zeros((len(labels), 3), dtype=np.float64)
    for _, train, test in splits(fold_ids):
        rows = train & allowed
        if not rows.any():
            raise ValueError("a fold has nothing to fit on")
        predict = fit(features[rows], labels[rows])
        out[test] = predict(features[test])
    return out
