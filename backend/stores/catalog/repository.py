"""The catalog repository: the only code that reads and writes the SQL catalog.

Every write runs in one transaction that also bumps the global catalog version (once per
batch) and writes one outbox row per changed product, so the vector index can always be
rebuilt from here. Writers are serialised: SQLite by BEGIN IMMEDIATE, PostgreSQL by locking the
single `catalog_state` row first. That makes catalog versions increase in commit order, so "the
index has applied version N" really means every change up to N.

Callers get `backend.domain.types` objects, never ORM rows.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session, joinedload, selectinload

from backend.domain.tenants import tenant_name
from backend.domain.types import ImageRef, Product, ProductInput, StockLevel
from backend.errors import AlreadyExists, InvalidInput, NotFound, shown
from backend.stores.catalog.db import reader, session_factory
from backend.stores.catalog.models import (
    ApiKey,
    CatalogState,
    Category,
    DedupReview,
    InventoryLevel,
    Merchant,
    OutboxEntry,
    ProductAttribute,
    ProductImage,
    ProductRecord,
    utcnow,
)


@dataclass(frozen=True)
class DedupPair:
    product_a: str
    product_b: str
    status: str  # "group" or "review"
    group_id: str | None
    probability: float
    image_similarity: float
    text_similarity: float
    evidence: dict[str, Any]


# Keeps IN (...) lists well under every backend's bound-parameter limit.
_CHUNK = 500
_MAX_SHORT = 255
_MAX_PRICE = 1e14  # Numeric(18, 4)
_MAX_INT32 = 2**31 - 1
_DEFAULT_CURRENCY = "EUR"


@dataclass(frozen=True)
class UpsertOutcome:
    product_id: str
    changed: bool
    # The product's last-change version: the batch's new version when changed, else unchanged.
    catalog_version: int


@dataclass(frozen=True)
class InventoryChange:
    """A stock and/or price change. `None` fields are left as they are. The inventory row
    (product, warehouse, bin) is created when missing and quantity or reorder_point is given."""

    product_id: str
    warehouse: str = ""
    bin: str = ""
    quantity: int | None = None
    reorder_point: int | None = None
    price: float | None = None
    currency: str | None = None


@dataclass(frozen=True)
class OutboxItem:
    id: int
    product_id: str
    op: str  # 'upsert' | 'delete' | 'payload'
    catalog_version: int
    attempts: int = 0  # claims so far, this one included


@dataclass(frozen=True)
class ApiKeyRow:
    id: int
    key_hash: str
    role: str
    merchant: str | None
    warehouse: str | None
    created_at: datetime
    revoked_at: datetime | None = None


# ---------------------------------------------------------------------------------------------
# Normalisation and the content hash
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Normalised:
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


def _text(name: str, value: object, *, sku: str = "", required: bool = False,
          max_len: int | None = _MAX_SHORT) -> str:
    where = f" (sku {shown(sku)})" if sku else ""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string{where}")
    value = value.strip()
    if required and not value:
        raise InvalidInput(f"{name} must not be empty{where}")
    if max_len is not None and len(value) > max_len:
        raise InvalidInput(f"{name} is longer than {max_len} characters{where}")
    return value


def normalise_category(path: str) -> str:
    """'  Shoes / Running/ ' -> 'Shoes/Running': trimmed segments, no empty ones."""
    return "/".join(seg.strip() for seg in path.split("/") if seg.strip())


def _price(value: object, *, sku: str = "") -> float:
    where = f" (sku {shown(sku)})" if sku else ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"price must be a number{where}")
    price = float(value)
    if not math.isfinite(price) or price < 0 or price >= _MAX_PRICE:
        raise InvalidInput(f"price must be finite, >= 0 and < {_MAX_PRICE:.0e}{where}")
    return round(price, 4)  # the stored precision, so hashes of input and stored rows agree


def _currency(value: object, *, sku: str = "") -> str:
    text = _text("currency", value, sku=sku).upper() or _DEFAULT_CURRENCY
    if len(text) != 3 or not text.isascii() or not text.isalpha():
        raise InvalidInput(f"currency must be an ISO 4217 code like 'EUR', got {shown(text)}")
    return text


def _count(name: str, value: object, *, sku: str = "") -> int:
    where = f" (sku {shown(sku)})" if sku else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer{where}")
    if value < 0 or value > _MAX_INT32:
        raise InvalidInput(f"{name} must be between 0 and {_MAX_INT32}{where}")
    return value


def _tenant(what: str, value: object, *, sku: str = "") -> str:
    """A merchant or warehouse name in its one canonical form (backend.domain.tenants)."""
    try:
        return tenant_name(value, what)
    except InvalidInput as exc:
        raise InvalidInput(f"{exc} (sku {sku!r})" if sku else str(exc)) from None


def validate_products(items: Sequence[ProductInput]) -> None:
    """Everything `upsert_products` checks before touching SQL (field values, one SKU per
    merchant per batch), so callers can refuse a batch before they store its image files."""
    _normalise_batch(items)


def _normalise_batch(items: Sequence[ProductInput]) -> list[_Normalised]:
    normalised = [_normalise_input(item) for item in items]
    seen: set[tuple[str, str]] = set()
    for n in normalised:
        if (n.merchant, n.sku) in seen:
            raise InvalidInput(f"duplicate sku {shown(n.sku)} for merchant {shown(n.merchant)} "
                               "in one batch")
        seen.add((n.merchant, n.sku))
    return normalised


def _normalise_input(item: ProductInput) -> _Normalised:
    sku = _text("sku", item.sku, required=True)
    merchant = _tenant("merchant", item.merchant, sku=sku)
    category = normalise_category(_text("category", item.category, sku=sku, max_len=None))
    if len(category) > 1024 or any(len(s) > _MAX_SHORT for s in category.split("/")):
        raise InvalidInput(f"category path is too long (sku {shown(sku)})")
    images = tuple(_text("image uri", uri, required=True, sku=sku, max_len=None)
                   for uri in item.images)
    levels: dict[tuple[str, str], StockLevel] = {}
    for level in item.inventory:
        warehouse = _tenant("warehouse", level.warehouse, sku=sku)
        bin_ = _text("bin", level.bin, sku=sku)
        if (warehouse, bin_) in levels:
            raise InvalidInput(f"duplicate inventory row {warehouse}/{bin_} (sku {shown(sku)})")
        levels[(warehouse, bin_)] = StockLevel(
            warehouse, bin_, _count("quantity", level.quantity, sku=sku),
            _count("reorder_point", level.reorder_point, sku=sku))
    attributes: dict[str, str] = {}
    for key, value in item.attributes.items():
        k = _text("attribute key", key, required=True, sku=sku)
        if k in attributes:
            raise InvalidInput(f"duplicate attribute {shown(k)} (sku {shown(sku)})")
        attributes[k] = _text(f"attribute {shown(k)}", value, sku=sku, max_len=None)
    return _Normalised(
        merchant=merchant, sku=sku,
        title=_text("title", item.title, required=True, sku=sku, max_len=None),
        description=_text("description", item.description, sku=sku, max_len=None),
        category=category,
        brand=_text("brand", item.brand, sku=sku),
        size=_text("size", item.size, sku=sku),
        material=_text("material", item.material, sku=sku),
        colour=_text("colour", item.colour, sku=sku),
        price=_price(item.price, sku=sku),
        currency=_currency(item.currency, sku=sku),
        listed=bool(item.listed),
        images=images,
        inventory=tuple(levels[k] for k in sorted(levels)),
        attributes=tuple(sorted(attributes.items())),
    )


def _normalised_from_record(rec: ProductRecord) -> _Normalised:
    """The canonical form of a stored product (its collections and parents must be loaded)."""
    return _Normalised(
        merchant=rec.merchant.name, sku=rec.sku, title=rec.title, description=rec.description,
        category=rec.category.path if rec.category is not None else "",
        brand=rec.brand, size=rec.size, material=rec.material, colour=rec.colour,
        price=round(float(rec.price), 4), currency=rec.currency, listed=rec.listed,
        images=tuple(img.uri for img in sorted(rec.images, key=lambda i: i.position)),
        inventory=tuple(sorted(
            (StockLevel(i.warehouse, i.bin, i.quantity, i.reorder_point) for i in rec.inventory),
            key=lambda s: (s.warehouse, s.bin))),
        attributes=tuple(sorted((a.key, a.value) for a in rec.attributes)),
    )


def _to_domain(rec: ProductRecord) -> Product:
    return Product(
        product_id=rec.id, sku=rec.sku, merchant=rec.merchant.name, title=rec.title,
        description=rec.description,
        category=rec.category.path if rec.category is not None else "",
        brand=rec.brand, size=rec.size, material=rec.material, colour=rec.colour,
        price=float(rec.price), currency=rec.currency,
        images=[ImageRef(uri=i.uri, position=i.position)
                for i in sorted(rec.images, key=lambda i: i.position)],
        inventory=sorted(
            (StockLevel(i.warehouse, i.bin, i.quantity, i.reorder_point) for i in rec.inventory),
            key=lambda s: (s.warehouse, s.bin)),
        attributes={a.key: a.value for a in rec.attributes},
        listed=rec.listed, catalog_version=rec.catalog_version,
    )


def _full_load() -> list[Any]:
    """Loader options for a complete product: 1 query + 3 batched collection queries."""
    return [
        joinedload(ProductRecord.merchant),
        joinedload(ProductRecord.category),
        selectinload(ProductRecord.images),
        selectinload(ProductRecord.attributes),
        selectinload(ProductRecord.inventory),
    ]


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _id_map(session: Session, key: InstrumentedAttribute[str], id_: InstrumentedAttribute[int],
            keys: Sequence[str]) -> dict[str, int]:
    return {k: i for k, i in session.execute(select(key, id_).where(key.in_(keys)))}


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _scope(what: str, names: str | None) -> str | None:
    """A comma list of tenant names in canonical form (None when empty)."""
    canonical = [tenant_name(n, what) for n in (names or "").split(",") if n.strip()]
    return ",".join(dict.fromkeys(canonical)) or None


def _api_key_row(row: ApiKey) -> ApiKeyRow:
    return ApiKeyRow(
        id=row.id, key_hash=row.key_hash, role=row.role, merchant=row.merchant,
        warehouse=row.warehouse, created_at=_aware(row.created_at),
        revoked_at=_aware(row.revoked_at) if row.revoked_at is not None else None,
    )


# ---------------------------------------------------------------------------------------------
# The repository
# ---------------------------------------------------------------------------------------------


class CatalogRepository:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._read = session_factory(reader(engine))
        self._write = session_factory(engine, write=True)

    # -- versioning ----------------------------------------------------------------------------

    def _lock_catalog(self, session: Session) -> int:
        """Take the writer lock (PostgreSQL row lock; SQLite already holds BEGIN IMMEDIATE) and
        return the current version. Creates the state row if a schema was made without seed."""
        version = session.scalar(
            select(CatalogState.catalog_version).where(CatalogState.id == 1).with_for_update())
        if version is None:
            session.execute(insert(CatalogState).values(id=1, catalog_version=0))
            return 0
        return int(version)

    def _bump(self, session: Session) -> int:
        version = session.scalar(
            update(CatalogState).where(CatalogState.id == 1)
            .values(catalog_version=CatalogState.catalog_version + 1)
            .returning(CatalogState.catalog_version))
        assert version is not None, "_lock_catalog runs first and creates the row"
        return int(version)

    def catalog_version(self) -> int:
        with self._read() as session:
            version = session.scalar(
                select(CatalogState.catalog_version).where(CatalogState.id == 1))
        return int(version or 0)

    # -- writes --------------------------------------------------------------------------------

    def upsert_products(self, items: list[ProductInput]) -> list[UpsertOutcome]:
        """Insert or update a batch in one transaction; outcomes are in input order.

        Idempotent: a product whose normalised content is unchanged gets no new version and no
        outbox row. `image_bytes` is not stored here: the caller saves uploads as files first
        and passes their URIs in `images`.
        """
        normalised = _normalise_batch(items)
        if not normalised:
            return []

        with self._write.begin() as session:
            self._lock_catalog(session)
            merchant_ids = self._ensure_merchants(session, {n.merchant for n in normalised})
            category_ids = self._ensure_categories(
                session, {n.category for n in normalised if n.category})
            existing = self._find_records(session, [
                (merchant_ids[n.merchant], n.sku) for n in normalised])

            hashes = [n.content_hash() for n in normalised]
            found = [existing.get((merchant_ids[n.merchant], n.sku)) for n in normalised]
            changed_idx = [i for i, rec in enumerate(found)
                           if rec is None or rec.deleted or rec.content_hash != hashes[i]]
            if not changed_idx:
                return [UpsertOutcome(rec.id, False, rec.catalog_version)
                        for rec in found if rec is not None]

            version = self._bump(session)
            now = utcnow()
            records: dict[int, ProductRecord] = {}
            for i in changed_idx:
                n = normalised[i]
                rec = found[i] or ProductRecord(
                    id=uuid.uuid4().hex, merchant_id=merchant_ids[n.merchant], sku=n.sku,
                    created_at=now)
                if found[i] is None:
                    session.add(rec)
                rec.title, rec.description = n.title, n.description
                rec.category_id = category_ids[n.category] if n.category else None
                rec.brand, rec.size, rec.material, rec.colour = (
                    n.brand, n.size, n.material, n.colour)
                rec.price, rec.currency, rec.listed = n.price, n.currency, n.listed
                rec.content_hash, rec.catalog_version = hashes[i], version
                rec.deleted, rec.updated_at = False, now
                records[i] = rec
            session.flush()

            # Replace children with bulk statements: ORM collection replacement would insert the
            # new (product_id, position) rows before deleting the old ones.
            ids = [records[i].id for i in changed_idx]
            for model in (ProductImage, ProductAttribute, InventoryLevel):
                for chunk in _chunks(ids):
                    session.execute(delete(model).where(model.product_id.in_(chunk)))
            image_rows = [{"product_id": records[i].id, "position": pos, "uri": uri}
                          for i in changed_idx for pos, uri in enumerate(normalised[i].images)]
            attr_rows = [{"product_id": records[i].id, "key": k, "value": v}
                         for i in changed_idx for k, v in normalised[i].attributes]
            stock_rows = [{"product_id": records[i].id, "warehouse": s.warehouse, "bin": s.bin,
                           "quantity": s.quantity, "reorder_point": s.reorder_point}
                          for i in changed_idx for s in normalised[i].inventory]
            for model, rows in ((ProductImage, image_rows), (ProductAttribute, attr_rows),
                                (InventoryLevel, stock_rows)):
                if rows:
                    session.execute(insert(model), rows)
            self._write_outbox(session, ids, "upsert", version, now)

            outcomes = []
            for i, prior in enumerate(found):
                if i in records:
                    outcomes.append(UpsertOutcome(records[i].id, True, version))
                elif prior is not None:
                    outcomes.append(UpsertOutcome(prior.id, False, prior.catalog_version))
            return outcomes

    def delete_products(self, product_ids: list[str]) -> tuple[int, int]:
        """Tombstone the products; unknown or already deleted ids are ignored.
        Returns (number deleted, catalog version after the call)."""
        wanted = list(dict.fromkeys(product_ids))
        with self._write.begin() as session:
            current = self._lock_catalog(session)
            found: list[str] = []
            for chunk in _chunks(wanted):
                found += session.scalars(
                    select(ProductRecord.id).where(ProductRecord.id.in_(chunk),
                                                   ProductRecord.deleted.is_(False))).all()
            if not found:
                return 0, current
            version = self._bump(session)
            now = utcnow()
            for chunk in _chunks(found):
                session.execute(
                    update(ProductRecord).where(ProductRecord.id.in_(chunk))
                    .values(deleted=True, catalog_version=version, updated_at=now))
            self._write_outbox(session, found, "delete", version, now)
            return len(found), version

    def update_inventory(self, updates: list[InventoryChange]) -> tuple[int, int]:
        """Apply stock and price changes in one transaction (no re-encoding: outbox 'payload').

        Returns (number of products whose stored state changed, catalog version after the
        call); repeating the same changes is a no-op. Unknown product -> NotFound, nothing
        written.
        """
        checked = [self._check_change(change) for change in updates]
        if not checked:
            return 0, self.catalog_version()
        wanted = list(dict.fromkeys(c.product_id for c in checked))
        with self._write.begin() as session:
            current = self._lock_catalog(session)
            records: dict[str, ProductRecord] = {}
            for chunk in _chunks(wanted):
                for rec in session.scalars(
                        select(ProductRecord).options(*_full_load())
                        .where(ProductRecord.id.in_(chunk), ProductRecord.deleted.is_(False))
                ).unique():
                    records[rec.id] = rec
            missing = [pid for pid in wanted if pid not in records]
            if missing:
                raise NotFound(f"product {shown(missing[0])} not found")

            for change in checked:
                rec = records[change.product_id]
                if change.quantity is not None or change.reorder_point is not None:
                    level = next((lv for lv in rec.inventory
                                  if (lv.warehouse, lv.bin) == (change.warehouse, change.bin)),
                                 None)
                    if level is None:
                        level = InventoryLevel(warehouse=change.warehouse, bin=change.bin,
                                               quantity=0, reorder_point=0)
                        rec.inventory.append(level)
                    if change.quantity is not None:
                        level.quantity = change.quantity
                    if change.reorder_point is not None:
                        level.reorder_point = change.reorder_point
                if change.price is not None:
                    rec.price = change.price
                if change.currency is not None:
                    rec.currency = change.currency

            changed = []
            for pid in wanted:
                rec = records[pid]
                new_hash = _normalised_from_record(rec).content_hash()
                if new_hash != rec.content_hash:
                    rec.content_hash = new_hash
                    changed.append(rec)
            if not changed:
                return 0, current  # every change set values already stored
            version = self._bump(session)
            now = utcnow()
            for rec in changed:
                rec.catalog_version, rec.updated_at = version, now
            session.flush()
            self._write_outbox(session, [rec.id for rec in changed], "payload", version, now)
            return len(changed), version

    @staticmethod
    def _check_change(change: InventoryChange) -> InventoryChange:
        pid = _text("product_id", change.product_id, required=True)
        stock = change.quantity is not None or change.reorder_point is not None
        if not stock and change.price is None and change.currency is None:
            raise InvalidInput(f"inventory update for {shown(pid)} changes nothing")
        return InventoryChange(
            product_id=pid,
            warehouse=(_tenant("warehouse", change.warehouse)
                       if stock or change.warehouse.strip() else ""),
            bin=_text("bin", change.bin),
            quantity=None if change.quantity is None else _count("quantity", change.quantity),
            reorder_point=(None if change.reorder_point is None
                           else _count("reorder_point", change.reorder_point)),
            price=None if change.price is None else _price(change.price),
            currency=None if change.currency is None else _currency(change.currency),
        )

    # -- write helpers -------------------------------------------------------------------------

    def _insert_ignore(self, session: Session, model: type[Any], rows: list[dict[str, Any]],
                       unique: str) -> None:
        """INSERT ... ON CONFLICT DO NOTHING (both backends), so get-or-create never races."""
        if not rows:
            return
        dialect = session.get_bind().dialect.name
        stmt_module: Any = postgresql if dialect == "postgresql" else sqlite
        stmt = stmt_module.insert(model).on_conflict_do_nothing(index_elements=[unique])
        session.execute(stmt, rows)

    def _ensure_merchants(self, session: Session, names: set[str]) -> dict[str, int]:
        ordered = sorted(names)
        ids: dict[str, int] = {}
        for chunk in _chunks(ordered):
            ids.update(_id_map(session, Merchant.name, Merchant.id, chunk))
        missing = [{"name": name} for name in ordered if name not in ids]
        if missing:
            self._insert_ignore(session, Merchant, missing, "name")
            for chunk in _chunks([m["name"] for m in missing]):
                ids.update(_id_map(session, Merchant.name, Merchant.id, chunk))
        return ids

    def _ensure_categories(self, session: Session, paths: set[str]) -> dict[str, int]:
        """Ids of `paths`, creating every missing node and its ancestors."""
        needed: set[str] = set()
        for path in paths:
            parts = path.split("/")
            needed.update("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
        ordered = sorted(needed, key=lambda p: (p.count("/"), p))  # parents before children
        ids: dict[str, int] = {}
        for chunk in _chunks(ordered):
            ids.update(_id_map(session, Category.path, Category.id, chunk))
        for path in ordered:
            if path in ids:
                continue
            parent, _, name = path.rpartition("/")
            self._insert_ignore(session, Category, [
                {"path": path, "name": name, "parent_id": ids[parent] if parent else None}],
                "path")
            category_id = session.scalar(select(Category.id).where(Category.path == path))
            assert category_id is not None
            ids[path] = category_id
        return ids

    def _find_records(self, session: Session,
                      keys: list[tuple[int, str]]) -> dict[tuple[int, str], ProductRecord]:
        by_merchant: dict[int, list[str]] = {}
        for merchant_id, sku in keys:
            by_merchant.setdefault(merchant_id, []).append(sku)
        found: dict[tuple[int, str], ProductRecord] = {}
        for merchant_id, skus in by_merchant.items():
            for chunk in _chunks(skus):
                for rec in session.scalars(select(ProductRecord).where(
                        ProductRecord.merchant_id == merchant_id, ProductRecord.sku.in_(chunk))):
                    found[(merchant_id, rec.sku)] = rec
        return found

    @staticmethod
    def _write_outbox(session: Session, product_ids: Iterable[str], op: str, version: int,
                      now: datetime) -> None:
        rows = [{"product_id": pid, "op": op, "catalog_version": version, "created_at": now,
                 "attempts": 0} for pid in product_ids]
        if rows:
            session.execute(insert(OutboxEntry), rows)

    # -- reads ---------------------------------------------------------------------------------

    def get_products(self, product_ids: list[str]) -> dict[str, Product]:
        """Products by id in one batched query set; unknown and deleted ids are left out."""
        wanted = list(dict.fromkeys(product_ids))
        if not wanted:
            return {}
        with self._read() as session:
            return self._load(session, wanted)

    @staticmethod
    def _load(session: Session, ids: Sequence[str]) -> dict[str, Product]:
        out: dict[str, Product] = {}
        for chunk in _chunks(ids):
            for rec in session.scalars(
                    select(ProductRecord).options(*_full_load())
                    .where(ProductRecord.id.in_(chunk), ProductRecord.deleted.is_(False))
            ).unique():
                out[rec.id] = _to_domain(rec)
        return out

    def product_versions(self, product_ids: Sequence[str]) -> dict[str, int]:
        """Live products' current catalog versions, by id: one primary-key lookup, none of
        the joins `get_products` needs (to check cached copies against)."""
        out: dict[str, int] = {}
        with self._read() as session:
            for chunk in _chunks(list(dict.fromkeys(product_ids))):
                for pid, version in session.execute(
                        select(ProductRecord.id, ProductRecord.catalog_version)
                        .where(ProductRecord.id.in_(chunk), ProductRecord.deleted.is_(False))):
                    out[pid] = int(version)
        return out

    def get_product(self, product_id: str) -> Product:
        product = self.get_products([product_id]).get(product_id)
        if product is None:
            raise NotFound(f"product {shown(product_id)} not found")
        return product

    def image_uris_in_use(self, uris: Sequence[str]) -> set[str]:
        """Which of these image URIs a stored product (deleted ones included) refers to."""
        wanted = list(dict.fromkeys(uris))
        found: set[str] = set()
        with self._read() as session:
            for chunk in _chunks(wanted):
                found.update(session.scalars(
                    select(ProductImage.uri).where(ProductImage.uri.in_(chunk))))
        return found

    def find_by_sku(self, merchant: str, sku: str) -> Product | None:
        merchant = tenant_name(merchant)
        with self._read() as session:
            rec = session.scalars(
                select(ProductRecord).options(*_full_load())
                .join(Merchant, ProductRecord.merchant_id == Merchant.id)
                .where(Merchant.name == merchant, ProductRecord.sku == sku.strip(),
                       ProductRecord.deleted.is_(False))
            ).unique().one_or_none()
            return _to_domain(rec) if rec is not None else None

    def iter_products(self, batch: int = 500, after: str = "") -> Iterator[list[Product]]:
        """All live products in id order (those with ids above `after`), `batch` at a time;
        each page is its own short read transaction, so a long reindex never pins an old
        snapshot."""
        if batch < 1:
            raise InvalidInput("batch must be >= 1")
        while True:
            with self._read() as session:
                ids = session.scalars(
                    select(ProductRecord.id)
                    .where(ProductRecord.id > after, ProductRecord.deleted.is_(False))
                    .order_by(ProductRecord.id).limit(batch)).all()
                if not ids:
                    return
                loaded = self._load(session, ids)
            after = ids[-1]
            # A product deleted between the two queries is simply skipped.
            page = [loaded[pid] for pid in ids if pid in loaded]
            if page:
                yield page

    def category_exists(self, prefix: str) -> bool:
        """True if a category is `prefix` or lies under it ('shoes' matches 'shoes/running',
        not 'shoeshine'). The empty prefix is the root, which always exists."""
        path = normalise_category(prefix)
        if not path:
            return True
        with self._read() as session:
            found = session.scalar(
                select(Category.id).where(or_(
                    func.lower(Category.path) == path.lower(),
                    # Not LIKE: SQLite's LIKE ignores ASCII case, PostgreSQL's does not; both
                    # sides are lower-cased because filters match categories case-insensitively.
                    func.lower(func.substr(Category.path, 1, len(path) + 1))
                    == path.lower() + "/")).limit(1))
        return found is not None

    # -- outbox --------------------------------------------------------------------------------

    def claim_outbox(self, limit: int) -> list[OutboxItem]:
        """The oldest pending entries, in id order, counting one more attempt on each.

        At-least-once: entries stay pending until `mark_done`, so a crashed drain is redone.
        Meant for one drainer at a time.
        """
        if limit < 1:
            return []
        with self._read() as session:
            if session.scalar(select(OutboxEntry.id).where(OutboxEntry.done_at.is_(None))
                              .limit(1)) is None:
                return []  # an idle poll takes no write lock
        with self._write.begin() as session:
            rows = session.execute(
                select(OutboxEntry.id, OutboxEntry.product_id, OutboxEntry.op,
                       OutboxEntry.catalog_version, OutboxEntry.attempts)
                .where(OutboxEntry.done_at.is_(None)).order_by(OutboxEntry.id).limit(limit)
            ).all()
            if rows:
                session.execute(update(OutboxEntry)
                                .where(OutboxEntry.id.in_([r.id for r in rows]))
                                .values(attempts=OutboxEntry.attempts + 1))
        return [OutboxItem(r.id, r.product_id, r.op, r.catalog_version, r.attempts + 1)
                for r in rows]

    def mark_done(self, outbox_ids: list[int]) -> int:
        """Mark entries done; returns how many were pending."""
        ids = sorted(set(outbox_ids))
        if not ids:
            return 0
        done = 0
        now = utcnow()
        with self._write.begin() as session:
            for chunk in _chunks(ids):
                result = session.execute(
                    update(OutboxEntry)
                    .where(OutboxEntry.id.in_(chunk), OutboxEntry.done_at.is_(None))
                    .values(done_at=now))
                done += getattr(result, "rowcount", 0)
        return done

    def pending_count(self) -> int:
        with self._read() as session:
            count = session.scalar(
                select(func.count()).select_from(OutboxEntry)
                .where(OutboxEntry.done_at.is_(None)))
        return int(count or 0)

    def pending_product_ids(self, among: Sequence[str] | None = None) -> list[str]:
        """Products with outbox rows not yet done (changes the index does not show yet),
        all of them or those in `among`."""
        stmt = select(OutboxEntry.product_id).where(OutboxEntry.done_at.is_(None)).distinct()
        with self._read() as session:
            if among is None:
                return list(session.scalars(stmt))
            found: set[str] = set()
            for chunk in _chunks(list(dict.fromkeys(among))):
                found.update(session.scalars(stmt.where(OutboxEntry.product_id.in_(chunk))))
            return sorted(found)

    def newest_pending_versions(self, product_ids: Sequence[str]) -> dict[str, int]:
        """product id -> the highest catalog version among its pending outbox rows."""
        out: dict[str, int] = {}
        with self._read() as session:
            for chunk in _chunks(list(dict.fromkeys(product_ids))):
                for pid, version in session.execute(
                        select(OutboxEntry.product_id, func.max(OutboxEntry.catalog_version))
                        .where(OutboxEntry.done_at.is_(None),
                               OutboxEntry.product_id.in_(chunk))
                        .group_by(OutboxEntry.product_id)):
                    out[pid] = int(version)
        return out

    def indexed_version(self) -> int:
        """The catalog version that search reflects: every change up to it is indexed."""
        with self._read() as session:
            oldest = session.scalar(
                select(func.min(OutboxEntry.catalog_version))
                .where(OutboxEntry.done_at.is_(None)))
            if oldest is not None:
                return int(oldest) - 1
            version = session.scalar(
                select(CatalogState.catalog_version).where(CatalogState.id == 1))
        return int(version or 0)

    def oldest_pending_age_s(self) -> float | None:
        with self._read() as session:
            oldest = session.scalar(
                select(func.min(OutboxEntry.created_at)).where(OutboxEntry.done_at.is_(None)))
        if oldest is None:
            return None
        return max(0.0, (utcnow() - _aware(oldest)).total_seconds())

    # -- API keys ------------------------------------------------------------------------------

    def create_api_key(self, key_hash: str, role: str, merchant: str | None = None,
                       warehouse: str | None = None) -> int:
        key_hash = _text("key_hash", key_hash, required=True, max_len=128)
        role = _text("role", role, required=True, max_len=32)
        row = ApiKey(key_hash=key_hash, role=role, merchant=_scope("merchant", merchant),
                     warehouse=_scope("warehouse", warehouse), created_at=utcnow())
        try:
            with self._write.begin() as session:
                session.add(row)
                session.flush()
                return row.id
        except IntegrityError as exc:
            raise AlreadyExists("an API key with this hash already exists") from exc

    def find_api_key(self, key_hash: str) -> ApiKeyRow | None:
        """The key with this hash, unless revoked."""
        with self._read() as session:
            row = session.scalars(select(ApiKey).where(
                ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))).one_or_none()
            return _api_key_row(row) if row is not None else None

    def list_api_keys(self, include_revoked: bool = False) -> list[ApiKeyRow]:
        """Every key (hashes only), oldest first."""
        with self._read() as session:
            stmt = select(ApiKey).order_by(ApiKey.id)
            if not include_revoked:
                stmt = stmt.where(ApiKey.revoked_at.is_(None))
            return [_api_key_row(row) for row in session.scalars(stmt)]

    def revoke_api_key(self, key_id: int) -> bool:
        """Revoke a key; False if it does not exist or was already revoked."""
        with self._write.begin() as session:
            result = session.execute(
                update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow()))
            return bool(getattr(result, "rowcount", 0))

    # -- dedup reviews -------------------------------------------------------------------------

    def save_dedup_run(self, run_id: str, pairs: Sequence[DedupPair]) -> None:
        """Store one dedup run's pairs in one transaction (all or nothing)."""
        rows = [{
            "run_id": run_id, "group_id": p.group_id, "product_a": p.product_a,
            "product_b": p.product_b, "status": p.status, "probability": p.probability,
            "image_similarity": p.image_similarity, "text_similarity": p.text_similarity,
            "evidence": json.dumps(p.evidence, ensure_ascii=False), "created_at": utcnow(),
        } for p in pairs]
        with self._write.begin() as session:
            if rows:
                session.execute(insert(DedupReview), rows)

    def dedup_run(self, run_id: str) -> list[DedupPair]:
        with self._read() as session:
            rows = session.scalars(select(DedupReview).where(DedupReview.run_id == run_id)
                                   .order_by(DedupReview.id))
            return [DedupPair(r.product_a, r.product_b, r.status, r.group_id, r.probability,
                              r.image_similarity, r.text_similarity, json.loads(r.evidence))
                    for r in rows]
