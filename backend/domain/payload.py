"""Catalog product -> vector-store payload, and the normalisation shared by payloads and filters
(keyword values are matched case-insensitively, so both sides are lower-cased here)."""

from __future__ import annotations

from dataclasses import replace

from backend.domain.lexical import document_terms, product_fields, title_key
from backend.domain.product_rules import category_key
from backend.domain.tenants import fold_name
from backend.domain.text_terms import sku_key
from backend.domain.types import Filters, Product
from backend.domain.vectors import PointPayload, category_prefixes


def norm(value: str) -> str:
    return value.strip().lower()


def product_payload(product: Product, position: int, model_version: str) -> PointPayload:
    return PointPayload(
        product_id=product.product_id,
        position=position,
        model_version=model_version,
        catalog_version=product.catalog_version,
        merchant=fold_name(product.merchant),
        category=category_prefixes(category_key(product.category)),
        size=norm(product.size),
        material=norm(product.material),
        colour=norm(product.colour),
        brand=norm(product.brand),
        price=float(product.price),
        in_stock=product.in_stock,
        listed=product.listed,
        sku_key=sku_key(product.sku),
        title_key=title_key(product.title),
        terms=document_terms(product_fields(product)),
        # The first image's point, or the text-only one (-1, written when no image loads).
        primary=position == -1
        or position == min((ref.position for ref in product.images), default=position),
    )


def mutable_payload(product: Product) -> dict[str, object]:
    """The payload fields that change without re-encoding (stock, price, listing)."""
    return {
        "price": float(product.price),
        "in_stock": product.in_stock,
        "listed": product.listed,
        "catalog_version": product.catalog_version,
    }


def normalise_filters(filters: Filters) -> Filters:
    return replace(
        filters,
        category=category_key(filters.category),
        sizes=[norm(v) for v in filters.sizes],
        materials=[norm(v) for v in filters.materials],
        colours=[norm(v) for v in filters.colours],
        brands=[norm(v) for v in filters.brands],
        # Tenant names compare in their one canonical form, as keys and SQL store them.
        merchants=[fold_name(v) for v in filters.merchants],
        listed_or_merchants=(
            None
            if filters.listed_or_merchants is None
            else [fold_name(v) for v in filters.listed_or_merchants]
        ),
    )
