"""The verdict features a listing's users rely on: a photo that scores another candidate
higher reads as such, and a pair without a photo (dedup) carries no photo evidence."""

from __future__ import annotations

import numpy as np
import pytest

from backend.domain.match import Evidence, ListingEvidence
from backend.domain.match_model import (
    FEATURES,
    NO_VERIFICATION,
    VERIFICATION_COLUMNS,
    pair_features,
)


def feature(row: np.ndarray, name: str) -> float:
    return float(row[FEATURES.index(name)])


def verification(probability: float, votes: float = 10.0) -> dict[str, float]:
    return {**NO_VERIFICATION, "probability": probability, "votes": votes,
            "vote_share": votes / 100}


def test_photo_margin_is_against_the_best_other_candidate() -> None:
    evidence = ListingEvidence([], {
        "pictured": Evidence(0.6, 0.5, verification(0.9)),
        "same-title": Evidence(0.4, 0.9, verification(0.3)),
    })
    pictured = evidence.features("pictured", [])
    same_title = evidence.features("same-title", [])
    assert feature(pictured, "photo_margin") == pytest.approx(0.6)
    assert feature(same_title, "photo_margin") == pytest.approx(-0.6)
    assert feature(pictured, "log_votes") == pytest.approx(np.log1p(10.0))


def test_a_listing_without_a_photo_has_no_photo_margin() -> None:
    evidence = ListingEvidence([], {"a": Evidence(None, 0.8), "b": Evidence(None, 0.7)})
    assert feature(evidence.features("a", []), "photo_margin") == 0.0


def test_a_pair_without_a_photo_to_verify_is_zero_in_every_photo_column() -> None:
    row = pair_features(0.7, 0.8, [], 0.5)
    assert (row[VERIFICATION_COLUMNS] == 0.0).all()
    assert feature(row, "image_sim") == pytest.approx(0.7)
