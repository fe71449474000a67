"""The catalog's rules for product values, in one place: what a product, an inventory change
or an API key field may hold, and the canonical form the catalog stores (and hashes, so an
unchanged product is recognised whatever spacing or key order a client sends).

Pure functions over domain types: the SQL repository applies them before writing, and the
catalog service applies them before it stores an upload's image files.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from backend.domain.ports import InventoryChange
from backend.domain.tenants import tenant_name
from backend.domain.types import PriceRange, ProductInput, StockLevel
from backend.errors import InvalidInput, shown

MAX_SHORT = 255  # String(255) columns
MAX_PRICE = 1e14  # Numeric(18, 4)
MAX_INT32 = 2**31 - 1
DEFAULT_CURRENCY = "EUR"


@dataclass(frozen=True)
class NormalisedProduct:
    """A product in canonical form: what is stored, and what the content hash covers."""

    merchant: str
    sku: str
    title: str
    description: str
    category: str
    brand: str
    size: str
    material: str
    colour: str
    price: float
    currency: str
    listed: bool
    images: tuple[str, ...]
    inventory: tuple[StockLevel, ...]  # sorted by (warehouse, bin)
    attributes: tuple[tuple[str, str], ...]  # sorted by key

    def content_hash(self) -> str:
        doc = {
            "merchant": self.merchant, "sku": self.sku, "title": self.title,
            "description": self.description, "category": self.category, "brand": self.brand,
            "size": self.size, "material": self.material, "colour": self.colour,
            "price": f"{self.price:.4f}", "currency": self.currency, "listed": self.listed,
            "images": list(self.images),
            "inventory": [[s.warehouse, s.bin, s.quantity, s.reorder_point]
                          for s in self.inventory],
            "attributes": [list(kv) for kv in self.attributes],
        }
        blob = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def text_field(name: str, value: object, *, sku: str = "", required: bool = False,
               max_len: int | None = MAX_SHORT) -> str:
    where = f" (sku {shown(sku)})" if sku else ""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string{where}")
    value = value.strip()
    if required and not value:
        raise InvalidInput(f"{name} must not be empty{where}")
    if max_len is not None and len(value) > max_len:
        raise InvalidInput(f"{name} is longer than {max_len} characters{where}")
    return value


def check_sku(value: object) -> str:
    """A SKU as stored and looked up: a non-empty string of at most 255 characters, trimmed."""
    return text_field("sku", value, required=True)


def normalise_category(path: str) -> str:
    """'  Shoes / Running/ ' -> 'Shoes/Running': trimmed segments, no empty ones. The catalog
    stores this form, case kept (stored products and their content hashes rely on it)."""
    return "/".join(seg.strip() for seg in path.split("/") if seg.strip())


def category_key(path: str) -> str:
    """The form categories are matched in: `normalise_category`, lower-cased ('Shoes/Running'
    and 'shoes/running ' are one category to a filter and to the index payload)."""
    return normalise_category(path).lower()


def check_price(value: object, *, sku: str = "") -> float:
    where = f" (sku {shown(sku)})" if sku else ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"price must be a number{where}")
    price = float(value)
    if not math.isfinite(price) or price < 0 or price >= MAX_PRICE:
        raise InvalidInput(f"price must be finite, >= 0 and < {MAX_PRICE:.0e}{where}")
    return round(price, 4)  # the stored precision, so hashes of input and stored rows agree


def check_price_range(price: PriceRange) -> None:
    """A price filter: each bound, when given, a finite number >= 0, and min <= max."""
    for label, value in (("min_price", price.min), ("max_price", price.max)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or value < 0:
            raise InvalidInput(f"{label} must be a finite number >= 0, got {value!r}")
    if price.min is not None and price.max is not None and price.min > price.max:
        raise InvalidInput(f"price range is empty: min_price {price.min} is above max_price "
                           f"{price.max}")


def check_currency(value: object, *, sku: str = "") -> str:
    text = text_field("currency", value, sku=sku).upper() or DEFAULT_CURRENCY
    if len(text) != 3 or not text.isascii() or not text.isalpha():
        raise InvalidInput(f"currency must be an ISO 4217 code like 'EUR', got {shown(text)}")
    return text


def check_count(name: str, value: object, *, sku: str = "") -> int:
    where = f" (sku {shown(sku)})" if sku else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer{where}")
    if value < 0 or value > MAX_INT32:
        raise InvalidInput(f"{name} must be between 0 and {MAX_INT32}{where}")
    return value


def check_tenant(what: str, value: object, *, sku: str = "") -> str:
    """A merchant or warehouse name in its one canonical form (backend.domain.tenants)."""
    try:
        return tenant_name(value, what)
    except InvalidInput as exc:
        raise InvalidInput(f"{exc} (sku {sku!r})" if sku else str(exc)) from None


def validate_products(items: Sequence[ProductInput]) -> None:
    """Everything `upsert_products` checks before touching SQL (field values, one SKU per
    merchant per batch), so callers can refuse a batch before they store its image files."""
    normalise_batch(items)


def normalise_batch(items: Sequence[ProductInput]) -> list[NormalisedProduct]:
    normalised = [normalise_input(item) for item in items]
    seen: set[tuple[str, str]] = set()
    for n in normalised:
        if (n.merchant, n.sku) in seen:
            raise InvalidInput(f"duplicate sku {shown(n.sku)} for merchant {shown(n.merchant)} "
                               "in one batch")
        seen.add((n.merchant, n.sku))
    return normalised


def normalise_input(item: ProductInput) -> NormalisedProduct:
    sku = check_sku(item.sku)
    merchant = check_tenant("merchant", item.merchant, sku=sku)
    category = normalise_category(text_field("category", item.category, sku=sku, max_len=None))
    if len(category) > 1024 or any(len(s) > MAX_SHORT for s in category.split("/")):
        raise InvalidInput(f"category path is too long (sku {shown(sku)})")
    images = tuple(text_field("image uri", uri, required=True, sku=sku, max_len=None)
                   for uri in item.images)
    levels: dict[tuple[str, str], StockLevel] = {}
    for level in item.inventory:
        warehouse = check_tenant("warehouse", level.warehouse, sku=sku)
        bin_ = text_field("bin", level.bin, sku=sku)
        if (warehouse, bin_) in levels:
            raise InvalidInput(f"duplicate inventory row {warehouse}/{bin_} (sku {shown(sku)})")
        levels[(warehouse, bin_)] = StockLevel(
            warehouse, bin_, check_count("quantity", level.quantity, sku=sku),
            check_count("reorder_point", level.reorder_point, sku=sku))
    attributes: dict[str, str] = {}
    for key, value in item.attributes.items():
        k = text_field("attribute key", key, required=True, sku=sku)
        if k in attributes:
            raise InvalidInput(f"duplicate attribute {shown(k)} (sku {shown(sku)})")
        attributes[k] = text_field(f"attribute {shown(k)}", value, sku=sku, max_len=None)
    return NormalisedProduct(
        merchant=merchant, sku=sku,
        title=text_field("title", item.title, required=True, sku=sku, max_len=None),
        description=text_field("description", item.description, sku=sku, max_len=None),
        category=category,
        brand=text_field("brand", item.brand, sku=sku),
        size=text_field("size", item.size, sku=sku),
        material=text_field("material", item.material, sku=sku),
        colour=text_field("colour", item.colour, sku=sku),
        price=check_price(item.price, sku=sku),
        currency=check_currency(item.currency, sku=sku),
        listed=bool(item.listed),
        images=images,
        inventory=tuple(levels[k] for k in sorted(levels)),
        attributes=tuple(sorted(attributes.items())),
    )



def check_inventory_change(change: InventoryChange) -> InventoryChange:
    """A change in canonical form; InvalidInput if a value is refused or it changes nothing."""
    pid = text_field("product_id", change.product_id, required=True)
    stock = change.quantity is not None or change.reorder_point is not None
    if not stock and change.price is None and change.currency is None:
        raise InvalidInput(f"inventory update for {shown(pid)} changes nothing")
    return InventoryChange(
        product_id=pid,
        warehouse=(check_tenant("warehouse", change.warehouse)
                   if stock or change.warehouse.strip() else ""),
        bin=text_field("bin", change.bin),
        quantity=None if change.quantity is None else check_count("quantity", change.quantity),
        reorder_point=(None if change.reorder_point is None
                       else check_count("reorder_point", change.reorder_point)),
        price=None if change.price is None else check_price(change.price),
        currency=None if change.currency is None else check_currency(change.currency),
    )
