"""The outbox: one row per catalog change, written in the change's own transaction and
drained by the indexer (the `Outbox` port): at-least-once, one drainer at a time."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from backend.domain.ports import OutboxItem
from backend.stores.catalog.models import CatalogState, OutboxEntry, utcnow
from backend.stores.catalog.sql_base import SqlCatalogStore, aware, chunks


def write_outbox(session: Session, product_ids: Iterable[str], op: str, version: int,
                 now: datetime) -> None:
    rows = [{"product_id": pid, "op": op, "catalog_version": version, "created_at": now,
             "attempts": 0} for pid in product_ids]
    if rows:
        session.execute(insert(OutboxEntry), rows)


class SqlOutbox(SqlCatalogStore):
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
            for chunk in chunks(ids):
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
            for chunk in chunks(list(dict.fromkeys(among))):
                found.update(session.scalars(stmt.where(OutboxEntry.product_id.in_(chunk))))
            return sorted(found)

    def newest_pending_versions(self, product_ids: Sequence[str]) -> dict[str, int]:
        """product id -> the highest catalog version among its pending outbox rows."""
        out: dict[str, int] = {}
        with self._read() as session:
            for chunk in chunks(list(dict.fromkeys(product_ids))):
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
        return max(0.0, (utcnow() - aware(oldest)).total_seconds())

    def changed_since(self, version: int) -> list[str]:
        """Products with an outbox entry (done or not) newer than catalog version `version`:
        what a rebuild that read the catalog at `version` has to write again."""
        with self._read() as session:
            return list(session.scalars(
                select(OutboxEntry.product_id)
                .where(OutboxEntry.catalog_version > version).distinct()))
