"""The Alembic migrations on SQLite and PostgreSQL: a full up/down/up cycle, and no drift
between the models and the migrated schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from backend.stores.catalog import migrate
from backend.stores.catalog.db import make_engine
from backend.stores.catalog.models import Base, CatalogState

TABLES = set(Base.metadata.tables)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_expected_tables() -> None:
    expected = {"merchants", "categories", "products", "product_images", "product_attributes",
                "inventory", "outbox", "catalog_state", "api_keys", "dedup_reviews"}
    assert expected == TABLES


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    # The PostgreSQL database is shared by the session: it may already be at head, with data.
    migrate.upgrade(db_url)
    assert _tables(db_url) == TABLES
    assert migrate.is_up_to_date(db_url)

    migrate.downgrade(db_url, "base")
    assert _tables(db_url) == set()
    assert migrate.current_revision(db_url) is None

    migrate.upgrade(db_url)
    assert _tables(db_url) == TABLES
    assert migrate.current_revision(db_url) == migrate.head_revision()
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:  # the single catalog_state row is seeded
            rows = conn.execute(select(CatalogState.id, CatalogState.catalog_version)).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [(1, 0)]


def test_models_match_migrated_schema(db_url: str) -> None:
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_url_with_percent_sign_survives_the_ini(tmp_path: Path) -> None:
    # ConfigParser interpolation would choke on a percent-encoded password or path.
    url = f"sqlite:///{tmp_path}/odd%25name.sqlite3"
    migrate.upgrade(url)
    assert migrate.is_up_to_date(url)
