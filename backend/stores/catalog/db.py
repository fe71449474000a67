"""Engine and session construction for the catalog (SQLite by default, PostgreSQL in production).

Never log the URL: it can carry a password.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

# Execution option that marks an engine (and so its sessions) as a writer; see `writer()`.
WRITE_OPTION = "prodsearch_catalog_write"


def is_sqlite(engine_or_url: Engine | URL | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def make_engine(url: str | URL, *, sqlite_foreign_keys: bool = True, **kwargs: Any) -> Engine:
    """Create the engine for `url`.

    SQLite: WAL journal (readers do not block the writer), foreign keys enforced, 30 s busy
    timeout, and the parent directory of the database file is created. SQLAlchemy emits BEGIN
    itself (the sqlite3 module's legacy transaction control skips BEGIN before SELECT and DDL);
    writer transactions start with BEGIN IMMEDIATE so two writers queue on the busy timeout
    instead of failing with "database is locked" when a read lock cannot be upgraded.
    `sqlite_foreign_keys=False` is for migrations: batch mode recreates tables, and dropping a
    parent table with foreign keys on would cascade-delete child rows.

    PostgreSQL: pool_pre_ping, so connections dropped by the server or a proxy are replaced.

    Both: hide_parameters, so that a database error (in a log line, a traceback or an
    exception message) never shows the values of a statement: they are client input.
    """
    kwargs.setdefault("hide_parameters", True)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(parsed, **kwargs)

    database = parsed.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN (see `_on_begin`)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if sqlite_foreign_keys else 'OFF'}")
            cursor.execute("PRAGMA busy_timeout=30000")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def writer(engine: Engine) -> Engine:
    """The same engine (same pool), marked so that its transactions are write transactions."""
    return engine.execution_options(**{WRITE_OPTION: True})


def reader(engine: Engine) -> Engine:
    """The same engine (same pool), for multi-statement reads that must see one snapshot."""
    if is_sqlite(engine):
        return engine  # a deferred SQLite transaction already reads one snapshot
    return engine.execution_options(isolation_level="REPEATABLE READ")


def session_factory(engine: Engine, *, write: bool = False) -> sessionmaker[Session]:
    """Sessions on `engine`. Objects stay readable after commit (expire_on_commit=False) because
    callers convert them to domain types after the transaction has ended."""
    bind = writer(engine) if write else engine
    return sessionmaker(bind=bind, expire_on_commit=False)
