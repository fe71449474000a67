"""A server with its own empty catalog (SQLite file or a PostgreSQL database) and its own
vector store, sharing the session's warm encoder: for tests that send arbitrary requests,
including writes, without touching the shared catalog."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from backend.app import build_app
from backend.config import load_settings
from backend.stores.catalog import migrate
from backend.transport.grpc.server import BackgroundServer
from tests.integration.conftest import Running
from tests.integration.side_server import _SharedEncoder


@contextmanager
def fresh_server(running: Running, data_dir: Path, database_url: str = "",
                 **settings: Any) -> Iterator[str]:
    """`with fresh_server(running, tmp_path, postgres_url) as addr:` (auth off)."""
    if database_url:
        migrate.upgrade(database_url)
    options: dict[str, Any] = {"data_dir": data_dir, "grpc_port": 0, "indexer_enabled": False,
                               "auth": {"enabled": False}, **settings}
    if database_url:
        options["database_url"] = database_url
    app = build_app(load_settings(**options), encoder=_SharedEncoder(running.app.encoder))
    server = BackgroundServer(app)
    try:
        yield server.start()
    finally:
        server.stop()
        app.close()
