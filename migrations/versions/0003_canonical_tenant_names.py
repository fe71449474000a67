"""canonical tenant names

Merchant and warehouse names become one canonical form (NFKC, trimmed, case-folded; see
backend/domain/tenants.py) in merchants, inventory and api_keys. Names that would merge two
distinct rows ("Merchant-B" and "merchant-b" as two merchants, or one product's stock in
"W1" and "w1" for the same bin) are a collision: the migration then changes nothing and
stops with a list of them, because merging two tenants could hand one tenant's products to
the other's keys. Rename or merge those rows, then run the migration again.

Products whose stored names change get an empty content hash (their next upsert is stored
again) and, where the vector payload's merchant differs from the new form, an outbox row so
the indexer rewrites it. Downgrade keeps the canonical names: the original spelling is gone.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 02:40:00.000000

"""
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from backend.domain.tenants import fold_name, name_problem

# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SHOWN = 20  # collisions listed in the error; the count says how many more there are


class TenantNameCollision(RuntimeError):
    """Existing rows whose names become equal in canonical form; nothing was changed."""


def _refuse(problems: list[str]) -> None:
    shown = "\n  ".join(problems[:_SHOWN])
    more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    raise TenantNameCollision(
        "cannot make merchant/warehouse names canonical (trimmed, case-folded); nothing "
        f"was changed. Rename or merge these rows, then migrate again:\n  {shown}{more}")


def upgrade() -> None:
    conn = op.get_bind()
    merchants = conn.execute(sa.text("SELECT id, name FROM merchants ORDER BY id")).all()
    levels = conn.execute(sa.text(
        "SELECT id, product_id, warehouse, bin FROM inventory ORDER BY id")).all()
    keys = conn.execute(sa.text(
        "SELECT id, merchant, warehouse FROM api_keys ORDER BY id")).all()

    # 1. Find every problem before writing anything.
    problems: list[str] = []
    by_name: dict[str, list[str]] = {}
    for _, name in merchants:
        by_name.setdefault(fold_name(name), []).append(name)
        problem = name_problem(fold_name(name))
        if problem is not None:
            problems.append(f"merchant {name!r}: name {problem}")
    problems += [f"merchants {', '.join(map(repr, names))} become one merchant {canon!r}"
                 for canon, names in by_name.items() if len(names) > 1]
    by_slot: dict[tuple[str, str, str], list[str]] = {}
    for _, product_id, warehouse, bin_ in levels:
        by_slot.setdefault((product_id, fold_name(warehouse), bin_), []).append(warehouse)
        problem = name_problem(fold_name(warehouse))
        if problem is not None:
            problems.append(f"product {product_id} warehouse {warehouse!r}: name {problem}")
    problems += [f"product {pid} bin {bin_!r}: warehouses {', '.join(map(repr, names))} "
                 f"become one warehouse {canon!r}"
                 for (pid, canon, bin_), names in by_slot.items() if len(names) > 1]
    if problems:
        _refuse(problems)

    # 2. Rewrite names; remember which products changed.
    touched: set[str] = set()
    reindex: set[str] = set()
    for merchant_id, name in merchants:
        canon = fold_name(name)
        if canon == name:
            continue
        conn.execute(sa.text("UPDATE merchants SET name = :n WHERE id = :i"),
                     {"n": canon, "i": merchant_id})
        ids = conn.execute(sa.text("SELECT id FROM products WHERE merchant_id = :i"),
                           {"i": merchant_id}).scalars().all()
        touched.update(ids)
        if canon != name.strip().lower():  # the old payload held name.strip().lower()
            reindex.update(ids)
    for level_id, product_id, warehouse, _ in levels:
        canon = fold_name(warehouse)
        if canon != warehouse:
            conn.execute(sa.text("UPDATE inventory SET warehouse = :w WHERE id = :i"),
                         {"w": canon, "i": level_id})
            touched.add(product_id)
    for key_id, merchant, warehouse in keys:
        new = [_scope(merchant), _scope(warehouse)]
        if new != [merchant, warehouse]:
            conn.execute(sa.text("UPDATE api_keys SET merchant = :m, warehouse = :w "
                                 "WHERE id = :i"), {"m": new[0], "w": new[1], "i": key_id})

    for product_id in sorted(touched):
        conn.execute(sa.text("UPDATE products SET content_hash = '' WHERE id = :i"),
                     {"i": product_id})
    live = [pid for pid in sorted(reindex) if not conn.execute(sa.text(
        "SELECT deleted FROM products WHERE id = :i"), {"i": pid}).scalar()]
    if live:
        version = int(conn.execute(sa.text(
            "SELECT catalog_version FROM catalog_state WHERE id = 1")).scalar() or 0) + 1
        conn.execute(sa.text("UPDATE catalog_state SET catalog_version = :v WHERE id = 1"),
                     {"v": version})
        now = datetime.now(UTC)
        for pid in live:
            conn.execute(sa.text("UPDATE products SET catalog_version = :v WHERE id = :i"),
                         {"v": version, "i": pid})
            conn.execute(sa.text(
                "INSERT INTO outbox (product_id, op, catalog_version, created_at, attempts) "
                "VALUES (:p, 'upsert', :v, :t, 0)"), {"p": pid, "v": version, "t": now})


def _scope(names: str | None) -> str | None:
    canonical = [fold_name(n) for n in (names or "").split(",") if n.strip()]
    return ",".join(dict.fromkeys(canonical)) or None


def downgrade() -> None:
    # The original spellings are not kept; canonical names are valid under 0002 as well.
    pass
