"""API keys in the SQL catalog (the `ApiKeyStore` port): hashes only, scoped to tenants in
their canonical form."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from backend.domain.ports import ApiKeyRow
from backend.domain.product_rules import text_field
from backend.domain.tenants import tenant_name
from backend.errors import AlreadyExists
from backend.stores.catalog.models import ApiKey, utcnow
from backend.stores.catalog.sql_base import SqlCatalogStore, aware


def _scope(what: str, names: str | None) -> str | None:
    """A comma list of tenant names in canonical form (None when empty)."""
    canonical = [tenant_name(n, what) for n in (names or "").split(",") if n.strip()]
    return ",".join(dict.fromkeys(canonical)) or None


def _api_key_row(row: ApiKey) -> ApiKeyRow:
    return ApiKeyRow(
        id=row.id, key_hash=row.key_hash, role=row.role, merchant=row.merchant,
        warehouse=row.warehouse, created_at=aware(row.created_at),
        revoked_at=aware(row.revoked_at) if row.revoked_at is not None else None,
    )


class SqlApiKeys(SqlCatalogStore):
    def create_api_key(self, key_hash: str, role: str, merchant: str | None = None,
                       warehouse: str | None = None) -> int:
        key_hash = text_field("key_hash", key_hash, required=True, max_len=128)
        role = text_field("role", role, required=True, max_len=32)
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
