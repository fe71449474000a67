"""`Filters` -> Qdrant filters, for qdrant-edge (`qdrant_edge`) and qdrant-client (`models`).

The semantics live in one place (`filter_spec`): a small neutral tree of conditions that
each backend translates verbatim, so both stores filter identically. Every filter is applied
inside the vector query (never as post-filtering), so a filtered search still returns `limit`
matches even when they rank far below the unfiltered top-k.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import qdrant_edge as qe
from qdrant_client import models

from backend.domain.product_rules import check_price_range
from backend.domain.types import Filters
from backend.errors import InvalidInput
from backend.stores.vectors.base import category_prefixes


class IndexKind(Enum):
    KEYWORD = "keyword"
    # A keyword index the engine also uses to co-locate points (one merchant's catalog).
    TENANT = "tenant"
    FLOAT = "float"
    INTEGER = "integer"
    BOOL = "bool"


# Every payload field a filter, a patch or a lookup touches gets an index.
PAYLOAD_INDEXES: dict[str, IndexKind] = {
    "product_id": IndexKind.KEYWORD,
    "merchant": IndexKind.TENANT,
    "category": IndexKind.KEYWORD,
    "size": IndexKind.KEYWORD,
    "material": IndexKind.KEYWORD,
    "colour": IndexKind.KEYWORD,
    "brand": IndexKind.KEYWORD,
    "price": IndexKind.FLOAT,
    "in_stock": IndexKind.BOOL,
    "listed": IndexKind.BOOL,
    "model_version": IndexKind.KEYWORD,
    "catalog_version": IndexKind.INTEGER,
    # Text search: exact SKU / title lookups and the terms facets match a query against.
    "sku_key": IndexKind.KEYWORD,
    "title_key": IndexKind.KEYWORD,
    "terms": IndexKind.KEYWORD,
    "primary": IndexKind.BOOL,
}


@dataclass(frozen=True)
class MatchAny:
    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class MatchBool:
    key: str
    value: bool


@dataclass(frozen=True)
class Range:
    key: str
    gte: float | None
    lte: float | None = None
    lt: float | None = None


@dataclass
class FilterSpec:
    """A backend-neutral filter: all of `must`, none of `must_not`, at least one of `should`."""

    must: list[Condition] = field(default_factory=list)
    must_not: list[Condition] = field(default_factory=list)
    should: list[Condition] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.must or self.must_not or self.should)


Condition = MatchAny | MatchBool | Range | FilterSpec


def filter_spec(filters: Filters) -> FilterSpec:
    spec = FilterSpec()
    if filters.category.strip("/"):
        # The payload holds every prefix of the product's path, so the deepest prefix of the
        # requested path matches the whole subtree below it.
        spec.must.append(MatchAny("category", (category_prefixes(filters.category)[-1],)))
    for key, values in filters.keyword_values().items():
        spec.must.append(MatchAny(key, tuple(values)))
    check_price_range(filters.price)
    low, high = filters.price.min, filters.price.max
    if low is not None or high is not None:
        spec.must.append(Range("price", gte=low, lte=high))
    if filters.in_stock_only:
        spec.must.append(MatchBool("in_stock", True))
    if filters.exclude_product_ids:
        spec.must_not.append(MatchAny("product_id", tuple(filters.exclude_product_ids)))
    if filters.listed_or_merchants is not None:
        # Nested, so that it composes with other should-groups instead of merging with them.
        either: list[Condition] = [MatchBool("listed", True)]
        if filters.listed_or_merchants:
            either.append(MatchAny("merchant", tuple(filters.listed_or_merchants)))
        spec.must.append(FilterSpec(should=either))
    return spec


def with_any_of(spec: FilterSpec, any_of: dict[str, tuple[str, ...]] | None) -> FilterSpec:
    """`spec` and at least one of the keys (field -> accepted values); `spec` if None."""
    if not any_of:
        return spec
    either: list[Condition] = [MatchAny(k, tuple(v)) for k, v in any_of.items() if v]
    if not either:
        raise InvalidInput("an any_of restriction needs at least one value")
    return FilterSpec(must=[*spec.must, FilterSpec(should=either)], must_not=spec.must_not,
                      should=spec.should)


def facet_spec(filters: Filters, all_terms: list[str], product_ids: list[str]) -> FilterSpec:
    """The facet population: one point per product (`primary`) passing the filters that
    either has every term in `all_terms` (none: no lexical match) or is one of
    `product_ids` (the top hits)."""
    base = filter_spec(filters)
    either: list[Condition] = []
    if all_terms:
        either.append(FilterSpec(must=[MatchAny("terms", (t,)) for t in all_terms]))
    if product_ids:
        either.append(MatchAny("product_id", tuple(product_ids)))
    must: list[Condition] = [*base.must, MatchBool("primary", True)]
    if not either:
        # Nothing matches: a condition no point meets (an empty id list).
        must.append(MatchAny("product_id", ("",)))
    else:
        must.append(FilterSpec(should=either))
    return FilterSpec(must=must, must_not=base.must_not, should=base.should)



def products_spec(product_ids: list[str], filters: Filters | None = None) -> FilterSpec:
    """Every point of these products; only those passing `filters` when given."""
    ids = MatchAny("product_id", tuple(product_ids))
    if filters is None:
        return FilterSpec(must=[ids])
    base = filter_spec(filters)
    return FilterSpec(must=[ids, *base.must], must_not=base.must_not, should=base.should)


# --- qdrant-edge ---------------------------------------------------------------------------


def _edge_condition(cond: Condition) -> qe.FieldCondition | qe.Filter:
    if isinstance(cond, FilterSpec):
        return edge_tree(cond)
    if isinstance(cond, MatchAny):
        match: qe.MatchAny | qe.MatchValue = (
            qe.MatchValue(cond.values[0])
            if len(cond.values) == 1
            else qe.MatchAny(list(cond.values))
        )
        return qe.FieldCondition(cond.key, match=match)
    if isinstance(cond, MatchBool):
        # qdrant-edge 0.9 reads a Python bool here as the integer 0/1, which never matches a
        # boolean payload; numpy's bool is not an int subclass and arrives as a real bool.
        flag: bool = np.bool_(cond.value)  # type: ignore[assignment]
        return qe.FieldCondition(cond.key, match=qe.MatchValue(flag))
    return qe.FieldCondition(cond.key, range=qe.RangeFloat(gte=cond.gte, lte=cond.lte,
                                                           lt=cond.lt))


def edge_tree(spec: FilterSpec) -> qe.Filter:
    def convert(conds: list[Condition]) -> list[qe.ConditionType] | None:
        return [_edge_condition(c) for c in conds] or None

    return qe.Filter(
        must=convert(spec.must), should=convert(spec.should), must_not=convert(spec.must_not)
    )


def to_edge(spec: FilterSpec) -> qe.Filter | None:
    return None if spec.is_empty() else edge_tree(spec)


def edge_filter(filters: Filters | None) -> qe.Filter | None:
    return None if filters is None else to_edge(filter_spec(filters))


# --- qdrant-client -------------------------------------------------------------------------


def _server_condition(cond: Condition) -> models.Condition:
    if isinstance(cond, FilterSpec):
        return _server_tree(cond)
    if isinstance(cond, MatchAny):
        match: models.Match = (
            models.MatchValue(value=cond.values[0])
            if len(cond.values) == 1
            else models.MatchAny(any=list(cond.values))
        )
        return models.FieldCondition(key=cond.key, match=match)
    if isinstance(cond, MatchBool):
        return models.FieldCondition(key=cond.key, match=models.MatchValue(value=cond.value))
    return models.FieldCondition(key=cond.key, range=models.Range(gte=cond.gte, lte=cond.lte,
                                                                 lt=cond.lt))


def _server_tree(spec: FilterSpec) -> models.Filter:
    def convert(conds: list[Condition]) -> list[models.Condition] | None:
        return [_server_condition(c) for c in conds] or None

    return models.Filter(
        must=convert(spec.must), should=convert(spec.should), must_not=convert(spec.must_not)
    )


def to_server(spec: FilterSpec) -> models.Filter | None:
    return None if spec.is_empty() else _server_tree(spec)


def server_filter(filters: Filters | None) -> models.Filter | None:
    return None if filters is None else to_server(filter_spec(filters))
