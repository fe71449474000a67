"""What every SQL catalog store shares: the engine's read and write sessions, the catalog
version and its writer lock, and batching helpers.

Every write runs in one transaction that also bumps the global catalog version (once per
batch) and writes one outbox row per changed product, so the vector index can always be
rebuilt from the catalog. Writers are serialised: SQLite by BEGIN IMMEDIATE, PostgreSQL by
locking the single `catalog_state` row first. That makes catalog versions increase in commit
order, so "the index has applied version N" really means every change up to N.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from backend.stores.catalog.db import reader, session_factory
from backend.stores.catalog.models import CatalogState

# Keeps IN (...) lists well under every backend's bound-parameter limit.
CHUNK = 500


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def id_map(session: Session, key: InstrumentedAttribute[str], id_: InstrumentedAttribute[int],
           keys: Sequence[str]) -> dict[str, int]:
    return {k: i for k, i in session.execute(select(key, id_).where(key.in_(keys)))}


def aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class SqlCatalogStore:
    """One SQL catalog engine: a read-only session factory and a serialised writer."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._read = session_factory(reader(engine))
        self._write = session_factory(engine, write=True)

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
