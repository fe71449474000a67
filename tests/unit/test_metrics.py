"""Retrieval metrics on hand-made rankings with hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.evaluation import metrics

# Three queries, five ranks each: 1 = the item at that rank is relevant.
RANKED = np.array(
    [
        [0, 1, 0, 1, 0],  # first hit at rank 2, second at rank 4
        [1, 0, 0, 0, 0],  # hit at rank 1
        [0, 0, 0, 0, 0],  # nothing relevant ranked
    ],
    dtype=bool,
)


def test_recall_is_the_hit_rate() -> None:
    assert metrics.recall_at_k(RANKED, 1).tolist() == [0.0, 1.0, 0.0]
    assert metrics.recall_at_k(RANKED, 2).tolist() == [1.0, 1.0, 0.0]
    assert metrics.recall_curve(RANKED, [1, 2, 5]) == pytest.approx({1: 1 / 3, 2: 2 / 3,
                                                                      5: 2 / 3})


def test_precision() -> None:
    assert metrics.precision_at_k(RANKED, 2).tolist() == [0.5, 0.5, 0.0]
    assert metrics.precision_at_k(RANKED, 4).tolist() == [0.5, 0.25, 0.0]
    # A ranking shorter than k: the missing ranks count as misses.
    assert metrics.precision_at_k(RANKED, 10).tolist() == [0.2, 0.1, 0.0]


def test_reciprocal_rank() -> None:
    assert metrics.reciprocal_rank(RANKED).tolist() == [0.5, 1.0, 0.0]


def test_average_precision_truncated() -> None:
    # q0: hits at 2 (P=1/2) and 4 (P=2/4): (0.5 + 0.5) / min(5, 2) = 0.5
    ap5 = metrics.average_precision_at_k(RANKED, 5)
    assert ap5.tolist() == pytest.approx([0.5, 1.0, 0.0])
    # Cut at 3: only the hit at rank 2 counts, still divided by min(3, 2) = 2.
    ap3 = metrics.average_precision_at_k(RANKED, 3, n_relevant=[2, 1, 0])
    assert ap3.tolist() == pytest.approx([0.25, 1.0, 0.0])
    # More relevant items in the gallery than ranked: divided by min(3, 5) = 3.
    ap3_many = metrics.average_precision_at_k(RANKED, 3, n_relevant=[5, 1, 0])
    assert ap3_many[0] == pytest.approx(0.5 / 3)


def test_ranked_relevance_from_scores_is_stable() -> None:
    scores = np.array([[0.1, 0.9, 0.5], [0.5, 0.5, 0.2]])
    relevant = np.array([[True, False, False], [False, True, False]])
    ranked = metrics.ranked_relevance(scores, relevant)
    # q0 ranks items 1, 2, 0; q1 has a tie: the lower gallery index (0) comes first.
    assert ranked.tolist() == [[False, False, True], [False, True, False]]
    assert metrics.reciprocal_rank(ranked).tolist() == pytest.approx([1 / 3, 1 / 2])
    assert metrics.rank(scores, 2).tolist() == [[1, 2], [0, 1]]
    with pytest.raises(ValueError):
        metrics.ranked_relevance(scores, relevant[:, :2])


def test_label_relevance_and_per_class() -> None:
    rel = metrics.label_relevance([0, 1], [1, 0, 1])
    assert rel.tolist() == [[False, True, False], [True, False, True]]
    by_class = metrics.per_class(np.array([1.0, 0.0, 1.0]), [0, 0, 1], names=["a", "b"])
    assert by_class == {"a": 0.5, "b": 1.0}


def test_summarize_overall_and_by_class() -> None:
    out = metrics.summarize(RANKED, recall_ks=(1,), precision_ks=(2,), map_ks=(5,), mrr=True,
                            labels=["x", "x", "y"])
    assert out["recall@1"] == pytest.approx(1 / 3, abs=1e-4)
    assert out["P@2"] == pytest.approx(1 / 3, abs=1e-4)
    assert out["mAP@5"] == pytest.approx(0.5, abs=1e-4)
    assert out["MRR"] == pytest.approx(0.5, abs=1e-4)
    assert out["by_class"] == {
        "x": {"recall@1": 0.5, "P@2": 0.5, "mAP@5": 0.75, "MRR": 0.75},
        "y": {"recall@1": 0.0, "P@2": 0.0, "mAP@5": 0.0, "MRR": 0.0},
    }


def test_topk_overlap() -> None:
    a = np.array([[1, 2, 3, 9], [5, 6, 7, 8]])
    b = np.array([[3, 4, 1, 2], [8, 7, 6, 5]])
    assert metrics.topk_overlap(a, b, 3).tolist() == pytest.approx([2 / 3, 2 / 3])
    assert metrics.topk_overlap(a, b, 4).tolist() == pytest.approx([0.75, 1.0])
