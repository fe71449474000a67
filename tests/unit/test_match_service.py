"""MatchService over fakes of its ports: candidates from the index, attribute differences
against the catalog, verdicts from the calibration, ordering and scoping, without SQL,
Qdrant, model weights or images."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from backend.config import SearchSettings
from backend.domain.match import Listing, MatchResult, MatchService
from backend.domain.match_model import FEATURES, VERDICTS, MatchCalibration
from backend.errors import InvalidInput, NotReady
from backend.security import Principal, Role, acting_as
from tests.fake_ports import FakeCatalog, MemoryVectorStore, make_product, vector_at
from tests.fakes import FakeEncoder

COLLECTION = "products"
TITLE = "trail runner"


def rule_calibration(model_version: str) -> MatchCalibration:
    """A calibration with readable rules instead of fitted weights: SAME when the text
    matches and no attribute differs, VARIANT when it matches but attributes differ,
    DIFFERENT when the text does not match."""
    weights = np.zeros((len(FEATURES) + 1, len(VERDICTS)))
    text, n_diff, bias = FEATURES.index("text_sim"), FEATURES.index("n_diff"), len(FEATURES)
    same, variant = VERDICTS.index("SAME"), VERDICTS.index("VARIANT")
    weights[text, same], weights[n_diff, same], weights[bias, same] = 20.0, -20.0, -10.0
    weights[text, variant], weights[bias, variant] = 20.0, -15.0
    return MatchCalibration(model_version, weights, np.zeros(len(FEATURES)),
                            np.ones(len(FEATURES)))


class World:
    def __init__(self, tmp_path: Path, calibrated: bool = True) -> None:
        self.encoder = FakeEncoder(dim=64)
        # Size is not part of a listing's text, so these listings all encode to one vector.
        listing_text = Listing(title=TITLE, size="42").text()
        query = self.encoder.encode_many([None], [listing_text])[0]["text"]
        self.catalog = FakeCatalog([
            make_product("same", size="42", material="Mesh"),
            make_product("variant", size="44", material="Mesh"),
            make_product("other", size="42", material="Mesh"),
            make_product("hidden", merchant="rival", listed=False, size="42"),
        ])
        self.vectors = MemoryVectorStore()
        for i, (pid, cosine) in enumerate(
                [("same", 1.0), ("variant", 1.0), ("other", 0.1), ("hidden", 1.0)]):
            self.vectors.add_product(COLLECTION, self.catalog.products[pid],
                                     [{"text": vector_at(query, cosine, seed=i)}])
        self.service = MatchService(self.catalog, self.vectors, self.encoder, COLLECTION,
                                    SearchSettings(), tmp_path)
        if calibrated:
            self.service.set_calibration(rule_calibration(self.encoder.model_version))

    def match(self, listing: Listing, top_k: int = 5) -> list[MatchResult]:
        return asyncio.run(self.service.match(listing, top_k))


def verdicts(results: list[MatchResult]) -> list[tuple[str, str]]:
    return [(r.product.product_id, r.verdict) for r in results]


def test_verdicts_follow_text_similarity_and_attribute_differences(tmp_path: Path) -> None:
    results = World(tmp_path).match(Listing(title=TITLE, size=" 42 "))
    # SAME first, then VARIANT, then DIFFERENT; the admin sees the unlisted product too.
    assert verdicts(results)[:3] in (
        [("same", "SAME"), ("hidden", "SAME"), ("variant", "VARIANT")],
        [("hidden", "SAME"), ("same", "SAME"), ("variant", "VARIANT")])
    assert verdicts(results)[3] == ("other", "DIFFERENT")
    variant = results[2]
    assert [(d.field, d.listing_value, d.catalog_value) for d in variant.diff] == [
        ("size", "42", "44")]
    assert results[0].diff == []  # spacing is not a difference; material unknown: none
    assert variant.similarity == pytest.approx(1.0, abs=1e-5)  # text only: the text cosine
    assert all(0.5 < r.probability <= 1.0 for r in results)


def test_a_storefront_key_matches_only_what_it_may_see(tmp_path: Path) -> None:
    world = World(tmp_path)
    with acting_as(Principal(Role.STOREFRONT, merchants=("acme",))):
        results = world.match(Listing(title=TITLE, size="42"))
    assert "hidden" not in [r.product.product_id for r in results]
    assert world.vectors.searches[-1][1].listed_or_merchants == ["acme"]


def test_top_k_keeps_the_best(tmp_path: Path) -> None:
    results = World(tmp_path).match(Listing(title=TITLE, size="44"), top_k=1)
    assert verdicts(results) == [("variant", "SAME")]


def test_an_uncalibrated_model_is_not_ready(tmp_path: Path) -> None:
    world = World(tmp_path, calibrated=False)
    with pytest.raises(NotReady, match="not calibrated"):
        world.match(Listing(title=TITLE))
    # A saved calibration for this model version is picked up from the data directory.
    path = tmp_path / "calibration" / f"match-{world.encoder.model_version}.json"
    rule_calibration(world.encoder.model_version).save(path)
    assert world.match(Listing(title=TITLE, size="42"))[0].verdict == "SAME"


def test_a_listing_needs_a_title_or_a_photo_and_a_sane_top_k(tmp_path: Path) -> None:
    world = World(tmp_path)
    with pytest.raises(InvalidInput, match="photo or a title"):
        world.match(Listing(title="  "))
    with pytest.raises(InvalidInput, match="photos per listing"):
        world.match(Listing(title=TITLE, images=[b"x"] * 9))
    with pytest.raises(InvalidInput, match="top_k"):
        world.match(Listing(title=TITLE), top_k=1000)
