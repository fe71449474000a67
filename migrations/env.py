"""Alembic environment of the catalog schema.

The URL is `sqlalchemy.url` when a caller set it (backend.stores.catalog.migrate does), else the
application settings (PRODSEARCH_DATABASE_URL, or the SQLite file in the data dir). It is never
logged: it can carry a password.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from backend.stores.catalog.db import is_sqlite, make_engine
from backend.stores.catalog.models import Base

config = context.config
target_metadata = Base.metadata

# The alembic command line gets the ini's logging setup; programmatic callers keep their own.
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from backend.config import load_settings

    return load_settings().sql_url


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (alembic upgrade --sql) instead of running it."""
    url = _url()
    _configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"},
               render_as_batch=is_sqlite(url))
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection, *, transactional_sqlite: bool = False) -> None:
    sqlite = connection.dialect.name == "sqlite"
    extra: dict[str, object] = {}
    if sqlite and transactional_sqlite:
        # make_engine emits BEGIN itself, so SQLite DDL is transactional: a failed upgrade
        # leaves nothing half-done.
        extra["transactional_ddl"] = True
    # SQLite cannot ALTER most things: batch mode recreates the table instead.
    _configure(connection=connection, render_as_batch=sqlite, **extra)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # a caller (e.g. a test) lends its own connection
        _run(connection)
        return
    # Foreign keys off on SQLite: batch mode drops and recreates tables, which with foreign
    # keys on would cascade-delete the rows of child tables.
    engine = make_engine(_url(), sqlite_foreign_keys=False)
    try:
        with engine.connect() as conn:
            _run(conn, transactional_sqlite=True)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
