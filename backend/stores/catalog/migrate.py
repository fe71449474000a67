"""Run the catalog's Alembic migrations from Python (the CLI's `migrate`, tests, start-up checks).

Migrations are the only way the schema changes; never `metadata.create_all` outside tests.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from backend.errors import ConfigError
from backend.stores.catalog.db import make_engine


def _find_alembic_ini() -> Path:
    # Through the import system, so that source checkouts, editable installs (where an older
    # install may still see `migrations` as a namespace package) and wheels all work.
    spec = importlib.util.find_spec("migrations")
    for location in (spec.submodule_search_locations or []) if spec else []:
        ini = Path(location) / "alembic.ini"
        if ini.is_file():
            return ini.resolve()
    raise RuntimeError("the `migrations` package (alembic.ini) is not installed")


ALEMBIC_INI = _find_alembic_ini()


def alembic_config(url: str) -> Config:
    """The Alembic config of the catalog, aimed at `url`."""
    cfg = Config(str(ALEMBIC_INI))
    cfg.set_main_option("script_location", str(ALEMBIC_INI.parent))
    # ConfigParser interpolation: a '%' in the URL (percent-encoded password) must be doubled.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    # Leave the application's logging configuration alone.
    cfg.attributes["configure_logging"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(url: str) -> str | None:
    """The revision the database is at (None: not migrated at all)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def is_up_to_date(url: str) -> bool:
    return current_revision(url) == head_revision()


def require_head(url: str) -> None:
    """Refuse to start on a database that `prodsearch migrate` has not brought up to date."""
    if not is_up_to_date(url):
        raise ConfigError(
            f"the catalog database is at revision {current_revision(url)!r}, not "
            f"{head_revision()!r}: run `prodsearch migrate` first"
        )
