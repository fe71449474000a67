"""GetProduct: one product by id, or by merchant and SKU, as the caller may see it."""

from __future__ import annotations

import asyncio

from backend.domain.ports import ProductReader
from backend.domain.types import Product
from backend.errors import InvalidInput, NotFound, shown
from backend.security import current as current_principal


class ProductLookup:
    def __init__(self, catalog: ProductReader) -> None:
        self._catalog = catalog

    async def get(self, product_id: str = "", merchant: str = "", sku: str = "") -> Product:
        """NotFound for a product the caller may not see, exactly as for one that does not
        exist: another merchant's unlisted product must not be detectable."""
        if product_id:
            product = await asyncio.to_thread(self._catalog.get_product, product_id)
        elif sku and merchant:
            found = await asyncio.to_thread(self._catalog.find_by_sku, merchant, sku)
            if found is None:
                raise NotFound(f"no product with sku {shown(sku)} for {shown(merchant)}")
            product = found
        else:
            raise InvalidInput("give product_id, or sku and merchant")
        if not current_principal().can_see(product):
            raise NotFound("product not found")
        return product
