"""Dedup review runs in the SQL catalog (the `DedupReviewStore` port)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import insert, select

from backend.domain.ports import DedupPair
from backend.stores.catalog.models import DedupReview, utcnow
from backend.stores.catalog.sql_base import SqlCatalogStore


class SqlDedupReviews(SqlCatalogStore):
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
