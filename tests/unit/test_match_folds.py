"""K-fold by item for match calibration's held-out figures: every item is held out exactly
once, no item is fitted on in the fold that holds it out, and each prediction comes from a
model that never saw that item's listings."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from backend.domain.match_folds import (
    FOLDS,
    cross_validated,
    fold_of,
    item_folds,
    splits,
)

IDS = [f"product-{n:04d}" for n in range(60)]


def rows_of(ids: list[str], per_item: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Each item's listings, as calibration lays them out: the item index of each row, and
    the row's fold (its item's fold)."""
    folds = item_folds(ids)
    item = np.repeat(np.arange(len(ids)), per_item)
    return item, folds[item]


def test_every_item_is_held_out_exactly_once_and_never_fitted_on_in_that_fold() -> None:
    item, fold_ids = rows_of(IDS)
    held_out_count = np.zeros(len(IDS), dtype=int)
    for _, train, test in splits(fold_ids):
        fitted, tested = set(item[train].tolist()), set(item[test].tolist())
        assert not fitted & tested
        assert fitted | tested == set(range(len(IDS)))
        for k in tested:
            held_out_count[k] += 1
    assert (held_out_count == 1).all()


def test_folds_come_from_the_product_id_not_the_sample_order() -> None:
    shuffled = list(reversed(IDS))
    by_id = dict(zip(IDS, item_folds(IDS).tolist(), strict=True))
    again = dict(zip(shuffled, item_folds(shuffled).tolist(), strict=True))
    assert by_id == again
    assert by_id == {pid: fold_of(pid) for pid in IDS}
    assert len(set(by_id.values())) == FOLDS  # 60 items fill every fold


def test_a_sample_the_hash_puts_in_one_fold_is_split_by_position() -> None:
    same_fold = [pid for pid in (f"x{n}" for n in range(2000)) if fold_of(pid) == 3][:10]
    folds = item_folds(same_fold)
    assert len(set(folds.tolist())) >= 2
    item, fold_ids = rows_of(same_fold)
    tested = [set(item[test].tolist()) for _, _, test in splits(fold_ids)]
    assert sorted(k for t in tested for k in t) == list(range(len(same_fold)))


def test_each_prediction_comes_from_a_model_that_never_saw_its_item() -> None:
    item, fold_ids = rows_of(IDS, per_item=4)
    features = item.astype(float)[:, None]  # a row's feature is its item's index
    labels = item % 3
    seen_by_fit: list[set[int]] = []

    def fit(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        fitted = {int(v) for v in x[:, 0]}
        seen_by_fit.append(fitted)

        def predict(rows: np.ndarray) -> np.ndarray:
            # Probability 1 on class 0 where the model saw the row's item: must never happen.
            seen = np.array([int(v) in fitted for v in rows[:, 0]])
            return np.where(seen[:, None], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0])
        return predict

    probs = cross_validated(features, labels, fold_ids, fit)
    assert len(seen_by_fit) == FOLDS
    assert (probs.argmax(axis=1) == 2).all()  # no row predicted by a model that saw it


def test_fit_rows_narrow_what_is_fitted_but_every_row_is_predicted() -> None:
    item, fold_ids = rows_of(IDS, per_item=2)
    easy = np.arange(len(item)) % 2 == 0
    fitted_rows: list[int] = []

    def fit(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        fitted_rows.append(len(x))
        return lambda rows: np.tile([0.2, 0.3, 0.5], (len(rows), 1))

    probs = cross_validated(np.zeros((len(item), 1)), item % 3, fold_ids, fit, fit_rows=easy)
    assert sum(fitted_rows) == (FOLDS - 1) * easy.sum()  # each easy row fitted in k-1 folds
    assert np.allclose(probs.sum(axis=1), 1.0)  # hard rows predicted too
