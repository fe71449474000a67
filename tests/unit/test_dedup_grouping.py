"""Dedup grouping: strong links merge only when every pair in the group is strong."""

from __future__ import annotations

from backend.domain.dedup import STRONG, WEAK, group_pairs, pair_key


def probs(**pairs: float) -> dict[tuple[str, str], float]:
    return {pair_key(*name.split("_")): p for name, p in pairs.items()}


def test_weak_link_is_not_merged_transitively() -> None:
    groups, review = group_pairs(probs(A_B=0.97, B_C=0.95, A_C=0.6))
    assert all(len(g) == 2 for g in groups), groups
    assert {"A", "B"} in groups
    assert review[("B", "C")].startswith("strong, but merging would link")
    assert review[("A", "C")] == "weak match"


def test_all_strong_pairs_form_one_group() -> None:
    groups, review = group_pairs(probs(A_B=0.97, B_C=0.95, A_C=0.93))
    assert groups == [{"A", "B", "C"}]
    assert not review


def test_missing_pair_counts_as_weak() -> None:
    groups, review = group_pairs(probs(A_B=0.97, B_C=0.95))
    assert {"A", "B"} in groups and ("B", "C") in review


def test_thresholds() -> None:
    groups, review = group_pairs(probs(A_B=STRONG - 0.01, C_D=WEAK - 0.01))
    assert not groups
    assert review == {("A", "B"): "weak match"}
