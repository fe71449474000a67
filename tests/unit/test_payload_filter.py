"""The filter evaluated on a payload (`payload_matches`, for photo search's voted
candidates, which come from outside the store) agrees with what the stores return: the
vector-store contract suite's filter cases, each checked on every point of its catalog."""

from __future__ import annotations

import pytest

from backend.stores.vectors.filters import filter_spec, payload_matches
from tests.unit.test_vector_store_contract import CATALOG, FILTER_CASES


@pytest.mark.parametrize("name", sorted(FILTER_CASES))
def test_payload_filter_agrees_with_the_contract_cases(name: str) -> None:
    filters, expected = FILTER_CASES[name]
    spec = filter_spec(filters)
    picked = [p.id for p in CATALOG.points if payload_matches(spec, p.payload.to_dict())]
    wanted = [p.id for p in CATALOG.points if expected(p.payload)]
    assert picked == wanted
    assert 0 < len(picked) < len(CATALOG.points)


def test_no_filter_matches_everything() -> None:
    from backend.domain.types import Filters

    spec = filter_spec(Filters())
    assert all(payload_matches(spec, p.payload.to_dict()) for p in CATALOG.points)
