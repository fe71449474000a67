"""Alembic migrations of the SQL catalog; run them with `backend.stores.catalog.migrate`."""
