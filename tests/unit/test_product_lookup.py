"""GetProduct's domain service over a fake catalog: by id or by merchant and SKU, and an
invisible product reads exactly like a missing one."""

from __future__ import annotations

import asyncio

import pytest

from backend.domain.lookup import ProductLookup
from backend.domain.types import Product
from backend.errors import InvalidInput, NotFound
from backend.security import Principal, Role, acting_as
from tests.fake_ports import FakeCatalog, make_product

CATALOG = FakeCatalog([make_product("p1"), make_product("p2", merchant="rival", listed=False)])


def get(**key: str) -> Product:
    return asyncio.run(ProductLookup(CATALOG).get(**key))


def test_by_id_or_by_merchant_and_sku() -> None:
    assert get(product_id="p1").product_id == "p1"
    assert get(merchant="acme", sku="sku-p1").product_id == "p1"
    with pytest.raises(NotFound, match="no product with sku"):
        get(merchant="acme", sku="sku-p2")
    with pytest.raises(InvalidInput, match="give product_id"):
        get(sku="sku-p1")


def test_an_unlisted_product_of_another_merchant_reads_as_missing() -> None:
    with acting_as(Principal(Role.STOREFRONT, merchants=("acme",))):
        with pytest.raises(NotFound) as hidden:
            get(product_id="p2")
        with pytest.raises(NotFound) as missing:
            get(product_id="p3")
    assert type(hidden.value) is type(missing.value)
    with acting_as(Principal(Role.STOREFRONT, merchants=("rival",))):
        assert get(merchant="rival", sku="sku-p2").product_id == "p2"
