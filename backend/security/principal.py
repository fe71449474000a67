"""Who is calling, and what they may see and change. Pure Python: no gRPC, no SQL.

The transport's auth interceptor sets the principal of each call in a context variable; the
domain reads it with `current()` and applies the scope itself (search filters run inside the
vector query, so a storefront key can never page past its scope).
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

from backend.domain.types import Filters, Product
from backend.errors import PermissionDenied, shown


class Role(enum.StrEnum):
    # Search, product lookup and match, scoped to listed products plus its merchants' own.
    STOREFRONT = "storefront"
    # Restock matches and stock updates for its warehouses (product lookup included).
    WAREHOUSE = "warehouse"
    # Catalog writes and everything else.
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    role: Role
    merchants: tuple[str, ...] = ()
    warehouses: tuple[str, ...] = ()
    key_id: int | None = None  # None: auth is disabled (the embedded demo)

    @property
    def label(self) -> str:
        """Safe to log: the key's id and role, never the key."""
        return f"key#{self.key_id}:{self.role.value}" if self.key_id is not None else "open"

    # -- scoping -------------------------------------------------------------------------------

    def scope_filters(self, filters: Filters) -> Filters:
        """The filters this principal may search with: a storefront sees listed products of
        every merchant and, of its own merchants, the unlisted ones too."""
        if self.role is not Role.STOREFRONT:
            return filters
        return replace(filters, listed_or_merchants=list(self.merchants))

    def can_see(self, product: Product) -> bool:
        if self.role is not Role.STOREFRONT or product.listed:
            return True
        return _norm(product.merchant) in {_norm(m) for m in self.merchants}

    def visible(self, products: Sequence[Product]) -> list[Product]:
        return [p for p in products if self.can_see(p)]

    def require_warehouse(self, warehouse: str) -> None:
        """PermissionDenied unless this principal may change stock in `warehouse`."""
        if self.role is Role.ADMIN:
            return
        if self.role is Role.WAREHOUSE and _norm(warehouse) in {
                _norm(w) for w in self.warehouses}:
            return
        raise PermissionDenied(f"this key may not change stock in warehouse {shown(warehouse)}")

    def require_role(self, *roles: Role) -> None:
        if self.role is not Role.ADMIN and self.role not in roles:
            raise PermissionDenied(f"a {self.role.value} key may not do this")


def _norm(value: str) -> str:
    return value.strip().lower()


# Everything allowed: used when auth is disabled, and by in-process callers (CLI, jobs).
UNRESTRICTED = Principal(role=Role.ADMIN)

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "prodsearch_principal", default=UNRESTRICTED)


def current() -> Principal:
    """The principal of the call being served (UNRESTRICTED outside a gRPC call)."""
    return _current.get()


def set_current(principal: Principal) -> contextvars.Token[Principal]:
    return _current.set(principal)


def reset_current(token: contextvars.Token[Principal]) -> None:
    _current.reset(token)


@contextmanager
def acting_as(principal: Principal) -> Iterator[None]:
    token = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(token)
