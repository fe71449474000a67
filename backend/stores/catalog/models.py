"""SQLAlchemy models of the catalog, the source of truth.

The schema only changes through Alembic (migrations/); `metadata.create_all` is for tests only.
Deletes are tombstones (`products.deleted`): the row keeps its id, merchant and SKU so that the
outbox keeps a valid foreign key, a reconcile can see what disappeared since a version, and a
re-upserted SKU gets its old product id back.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names, so that migrations can drop and alter them on every backend
# (SQLite batch mode needs names to find constraints again).
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

OUTBOX_OPS: tuple[str, ...] = ("upsert", "delete", "payload")

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias), never a BIGINT one.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Merchant(Base):
    __tablename__ = "merchants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)


class Category(Base):
    """A node of the category tree; `path` is the full slash-separated path ("shoes/running")."""

    __tablename__ = "categories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(String(1024), unique=True)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("categories.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))


class ProductRecord(Base):
    __tablename__ = "products"
    __table_args__ = (
        UniqueConstraint("merchant_id", "sku"),
        CheckConstraint("price >= 0", name="price_non_negative"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    merchant_id: Mapped[int] = mapped_column(ForeignKey("merchants.id"))
    sku: Mapped[str] = mapped_column(String(255))
    title: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    category_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id"), index=True)
    brand: Mapped[str] = mapped_column(String(255), default="")
    size: Mapped[str] = mapped_column(String(255), default="")
    material: Mapped[str] = mapped_column(String(255), default="")
    colour: Mapped[str] = mapped_column(String(255), default="")
    # Exact decimal storage; handed out as float, which is what the domain types use.
    price: Mapped[float] = mapped_column(Numeric(18, 4, asdecimal=False), default=0.0)
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    listed: Mapped[bool] = mapped_column(Boolean, default=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    # The catalog version of this product's last change (upsert, stock/price, delete).
    catalog_version: Mapped[int] = mapped_column(BigInteger, index=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    # lazy="raise": every read path states its loads, so an N+1 fails loudly instead of slowly.
    merchant: Mapped[Merchant] = relationship(lazy="raise")
    category: Mapped[Category | None] = relationship(lazy="raise")
    images: Mapped[list[ProductImage]] = relationship(
        lazy="raise", order_by="ProductImage.position", cascade="all, delete-orphan",
        passive_deletes=True,
    )
    attributes: Mapped[list[ProductAttribute]] = relationship(
        lazy="raise", order_by="ProductAttribute.key", cascade="all, delete-orphan",
        passive_deletes=True,
    )
    inventory: Mapped[list[InventoryLevel]] = relationship(
        lazy="raise", order_by=lambda: (InventoryLevel.warehouse, InventoryLevel.bin),
        cascade="all, delete-orphan", passive_deletes=True,
    )


class ProductImage(Base):
    __tablename__ = "product_images"
    __table_args__ = (UniqueConstraint("product_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(Text)


class ProductAttribute(Base):
    __tablename__ = "product_attributes"

    product_id: Mapped[str] = mapped_column(
        ForeignKey("products.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class InventoryLevel(Base):
    __tablename__ = "inventory"
    __table_args__ = (
        UniqueConstraint("product_id", "warehouse", "bin"),
        CheckConstraint("quantity >= 0", name="quantity_non_negative"),
        CheckConstraint("reorder_point >= 0", name="reorder_point_non_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"))
    warehouse: Mapped[str] = mapped_column(String(255))
    bin: Mapped[str] = mapped_column(String(255), default="")
    quantity: Mapped[int] = mapped_column(Integer, default=0)
    reorder_point: Mapped[int] = mapped_column(Integer, default=0)


class OutboxEntry(Base):
    """A change the indexer still has to apply to the vector store (written in the same
    transaction as the change itself)."""

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint("op IN ('upsert', 'delete', 'payload')", name="op"),
        # The drain query: WHERE done_at IS NULL ORDER BY id.
        Index("ix_outbox_pending", "done_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"))
    op: Mapped[str] = mapped_column(String(16))
    catalog_version: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class CatalogState(Base):
    """Exactly one row (id = 1): the global catalog version, bumped once per write batch."""

    __tablename__ = "catalog_state"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    catalog_version: Mapped[int] = mapped_column(BigInteger, default=0)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    merchant: Mapped[str | None] = mapped_column(String(255))
    warehouse: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DedupReview(Base):
    """A pair of listings from different merchants that may be the same product, with the
    evidence. status: 'group' (merged: every pair in its group is a strong match) or 'review'
    (a weak link, or a strong one that would merge through a weak link: a person decides)."""

    __tablename__ = "dedup_reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    group_id: Mapped[str | None] = mapped_column(String(32))
    product_a: Mapped[str] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"))
    product_b: Mapped[str] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    probability: Mapped[float] = mapped_column(Float)
    image_similarity: Mapped[float] = mapped_column(Float)
    text_similarity: Mapped[float] = mapped_column(Float)
    evidence: Mapped[str] = mapped_column(Text)  # JSON: attribute differences, reason
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
