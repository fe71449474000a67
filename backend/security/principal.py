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

from backend.domain.tenants import fold_name
from backend.domain.types import Filters, ImageRef, Product
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
        return replace(filters, listed_or_merchants=sorted(self._merchants))

    def can_see(self, product: Product) -> bool:
        """Admins see everything; others see listed products and their merchants' own. A
        warehouse key also sees the unlisted products it holds stock of (it must be able to
        restock them)."""
        if self.role is Role.ADMIN or product.listed:
            return True
        if fold_name(product.merchant) in self._merchants:
            return True
        return self.role is Role.WAREHOUSE and any(
            fold_name(s.warehouse) in self._warehouses for s in product.inventory)

    def visible(self, products: Sequence[Product]) -> list[Product]:
        return [p for p in products if self.can_see(p)]

    def redact(self, product: Product) -> Product:
        """What this principal may be shown of a product it can see: only admins get the
        server's image paths (others get a stable opaque reference), and a warehouse key sees
        stock of its own warehouses only."""
        if self.role is Role.ADMIN:
            return product
        images = [ImageRef(uri=opaque_image_ref(product.product_id, i.position),
                           position=i.position) for i in product.images]
        inventory = product.inventory
        if self.role is Role.WAREHOUSE:
            inventory = [s for s in inventory if fold_name(s.warehouse) in self._warehouses]
        return replace(product, images=images, inventory=list(inventory))

    def require_warehouse(self, warehouse: str) -> None:
        """PermissionDenied unless this principal may change stock in `warehouse`."""
        if self.role is Role.ADMIN:
            return
        if self.role is Role.WAREHOUSE and fold_name(warehouse) in self._warehouses:
            return
        raise PermissionDenied(f"this key may not change stock in warehouse {shown(warehouse)}")

    @property
    def _merchants(self) -> frozenset[str]:
        return frozenset(fold_name(m) for m in self.merchants)

    @property
    def _warehouses(self) -> frozenset[str]:
        return frozenset(fold_name(w) for w in self.warehouses)

    def require_role(self, *roles: Role) -> None:
        if self.role is not Role.ADMIN and self.role not in roles:
            raise PermissionDenied(f"a {self.role.value} key may not do this")


def opaque_image_ref(product_id: str, position: int) -> str:
    """A stable reference to a product image that reveals nothing about server storage."""
    return f"image:{product_id}/{position}"


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
