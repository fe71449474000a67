"""The catalog's value rules (backend.domain.product_rules): one category normalisation for
storage and for matching, one price check for products and for price filters, one SKU form."""

from __future__ import annotations

import math

import pytest

from backend.domain.payload import normalise_filters, product_payload
from backend.domain.product_rules import (
    category_key,
    check_price,
    check_price_range,
    check_sku,
    normalise_category,
    normalise_input,
)
from backend.domain.types import Filters, PriceRange, Product, ProductInput
from backend.errors import InvalidInput


def test_the_catalog_keeps_category_case_and_matching_ignores_it() -> None:
    assert normalise_category("  Shoes / Running/ ") == "Shoes/Running"
    assert normalise_category("/a//b/") == "a/b"
    assert category_key("  Shoes / Running/ ") == "shoes/running"
    assert category_key("SHOES/running") == category_key("shoes / Running")


def test_payload_and_filter_categories_use_the_same_key() -> None:
    product = Product("p1", "S1", "acme", "t", "", " Shoes / Running ", "", "", "", "", 1.0,
                      "EUR", [], [], {}, True, 1)
    payload = product_payload(product, 0, "m1")
    assert payload.category == ["shoes", "shoes/running"]
    assert normalise_filters(Filters(category="SHOES/Running/")).category == "shoes/running"


def test_a_stored_product_keeps_the_category_as_written() -> None:
    stored = normalise_input(ProductInput(sku=" s1 ", merchant="acme", title="t",
                                          category=" Shoes / Running "))
    assert (stored.sku, stored.category) == ("s1", "Shoes/Running")


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, 1e14, "3", True, None])
def test_a_product_price_must_be_a_finite_amount(bad: object) -> None:
    with pytest.raises(InvalidInput):
        check_price(bad)


def test_a_price_is_rounded_to_the_stored_precision() -> None:
    assert check_price(12.345678) == 12.3457
    assert check_price(0) == 0.0


@pytest.mark.parametrize("price", [PriceRange(min=-1), PriceRange(max=math.inf),
                                   PriceRange(min=math.nan), PriceRange(min=50, max=10)])
def test_a_price_filter_needs_finite_ordered_bounds(price: PriceRange) -> None:
    with pytest.raises(InvalidInput):
        check_price_range(price)


def test_open_and_equal_price_bounds_are_accepted() -> None:
    check_price_range(PriceRange())
    check_price_range(PriceRange(min=10, max=10))
    check_price_range(PriceRange(max=0))


@pytest.mark.parametrize("bad", ["", "   ", "x" * 256, 7])
def test_a_sku_must_be_a_short_non_empty_string(bad: object) -> None:
    with pytest.raises(InvalidInput):
        check_sku(bad)


def test_a_sku_is_trimmed() -> None:
    assert check_sku("  AB-1 ") == "AB-1"
