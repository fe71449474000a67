"""Products in the SQL catalog: batched, idempotent writes (the `ProductCatalog` port) and
reads that hand back `backend.domain.types.Product`, never ORM rows. Field values are checked
and canonicalised by `backend.domain.product_rules` before anything is written."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, joinedload, selectinload

from backend.domain.ports import InventoryChange, UpsertOutcome
from backend.domain.product_rules import (
    NormalisedProduct,
    check_inventory_change,
    normalise_batch,
    normalise_category,
)
from backend.domain.tenants import tenant_name
from backend.domain.types import ImageRef, Product, ProductInput, StockLevel
from backend.errors import InvalidInput, NotFound, shown
from backend.stores.catalog.models import (
    Category,
    InventoryLevel,
    Merchant,
    ProductAttribute,
    ProductImage,
    ProductRecord,
    utcnow,
)
from backend.stores.catalog.outbox import write_outbox
from backend.stores.catalog.sql_base import SqlCatalogStore, chunks, id_map


def _normalised_from_record(rec: ProductRecord) -> NormalisedProduct:
    """The canonical form of a stored product (its collections and parents must be loaded)."""
    return NormalisedProduct(
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


class SqlProducts(SqlCatalogStore):
    # -- writes --------------------------------------------------------------------------------

    def upsert_products(self, items: list[ProductInput]) -> list[UpsertOutcome]:
        """Insert or update a batch in one transaction; outcomes are in input order.

        Idempotent: a product whose normalised content is unchanged gets no new version and no
        outbox row. `image_bytes` is not stored here: the caller saves uploads as files first
        and passes their URIs in `images`.
        """
        normalised = normalise_batch(items)
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
                for chunk in chunks(ids):
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
            write_outbox(session, ids, "upsert", version, now)

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
            for chunk in chunks(wanted):
                found += session.scalars(
                    select(ProductRecord.id).where(ProductRecord.id.in_(chunk),
                                                   ProductRecord.deleted.is_(False))).all()
            if not found:
                return 0, current
            version = self._bump(session)
            now = utcnow()
            for chunk in chunks(found):
                session.execute(
                    update(ProductRecord).where(ProductRecord.id.in_(chunk))
                    .values(deleted=True, catalog_version=version, updated_at=now))
            write_outbox(session, found, "delete", version, now)
            return len(found), version

    def update_inventory(self, updates: list[InventoryChange]) -> tuple[int, int]:
        """Apply stock and price changes in one transaction (no re-encoding: outbox 'payload').

        Returns (number of products whose stored state changed, catalog version after the
        call); repeating the same changes is a no-op. Unknown product -> NotFound, nothing
        written.
        """
        checked = [check_inventory_change(change) for change in updates]
        if not checked:
            return 0, self.catalog_version()
        wanted = list(dict.fromkeys(c.product_id for c in checked))
        with self._write.begin() as session:
            current = self._lock_catalog(session)
            records: dict[str, ProductRecord] = {}
            for chunk in chunks(wanted):
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
            write_outbox(session, [rec.id for rec in changed], "payload", version, now)
            return len(changed), version

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
        for chunk in chunks(ordered):
            ids.update(id_map(session, Merchant.name, Merchant.id, chunk))
        missing = [{"name": name} for name in ordered if name not in ids]
        if missing:
            self._insert_ignore(session, Merchant, missing, "name")
            for chunk in chunks([m["name"] for m in missing]):
                ids.update(id_map(session, Merchant.name, Merchant.id, chunk))
        return ids

    def _ensure_categories(self, session: Session, paths: set[str]) -> dict[str, int]:
        """Ids of `paths`, creating every missing node and its ancestors."""
        needed: set[str] = set()
        for path in paths:
            parts = path.split("/")
            needed.update("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
        ordered = sorted(needed, key=lambda p: (p.count("/"), p))  # parents before children
        ids: dict[str, int] = {}
        for chunk in chunks(ordered):
            ids.update(id_map(session, Category.path, Category.id, chunk))
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
            for chunk in chunks(skus):
                for rec in session.scalars(select(ProductRecord).where(
                        ProductRecord.merchant_id == merchant_id, ProductRecord.sku.in_(chunk))):
                    found[(merchant_id, rec.sku)] = rec
        return found

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
        for chunk in chunks(ids):
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
            for chunk in chunks(list(dict.fromkeys(product_ids))):
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
            for chunk in chunks(wanted):
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
