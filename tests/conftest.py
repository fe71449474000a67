"""Fixtures shared by every test suite. Keep them small and generic."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from backend.stores.catalog import migrate
from backend.stores.catalog.db import make_engine
from backend.stores.catalog.repository import CatalogRepository

# Server that hosts the throwaway test databases (trust auth in development and CI).
POSTGRES_ADMIN_URL = os.environ.get(
    "PRODSEARCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _libpq(url: str) -> str:
    """SQLAlchemy URL -> libpq conninfo URL, for psycopg itself."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file URL in this test's temporary folder (the file does not exist yet)."""
    return f"sqlite:///{tmp_path / 'catalog.sqlite3'}"


@pytest.fixture
def sqlite_catalog(sqlite_url: str) -> Iterator[CatalogRepository]:
    """A migrated, empty SQLite catalog in this test's temporary folder."""
    migrate.upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        yield CatalogRepository(engine)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test session, dropped at the end.

    Shared by every test of the session: tests that need a clean state clean up themselves.
    Skips when the server cannot be reached.
    """
    admin = _libpq(POSTGRES_ADMIN_URL)
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL server not reachable (set PRODSEARCH_TEST_POSTGRES_URL): "
                    f"{type(exc).__name__}")
    name = f"prodsearch_test_{uuid.uuid4().hex[:12]}"
    with conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(
            hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            # FORCE: a test that leaked a pooled connection must not leave the database behind.
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
