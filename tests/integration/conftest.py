"""A real server on 127.0.0.1 over a small catalog of real images (openclipart), shared by the
integration tests of one session: SQLite + qdrant-edge in a temporary folder, real encoders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from backend.app import App, build_app
from backend.config import load_settings
from backend.demo_catalog import OPENCLIPART_DIR, build_catalog, pick_images, write_catalog
from backend.domain.ingest import ingest_file
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2_grpc as rpc
from backend.transport.grpc.server import BackgroundServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CATALOG_SIZE = 80


@dataclass
class Running:
    addr: str
    app: App
    catalog: list[dict[str, object]]
    channel: grpc.Channel
    search: rpc.ProductSearchStub
    writes: rpc.CatalogStub
    data_dir: Path


def require_openclipart() -> None:
    if not OPENCLIPART_DIR.is_dir():
        pytest.skip("needs real images: apt-get install openclipart-png")


@pytest.fixture(scope="session")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    require_openclipart()
    data_dir = tmp_path_factory.mktemp("server-data")
    # Auth off explicitly: these tests are about search; test_security.py runs a second
    # server with keys required over the same app.
    settings = load_settings(data_dir=data_dir, grpc_port=0, indexer_poll_ms=50,
                             auth={"enabled": False})
    catalog = build_catalog(pick_images(OPENCLIPART_DIR, CATALOG_SIZE, seed=5), OPENCLIPART_DIR)
    path = data_dir / "catalog.jsonl"
    write_catalog(catalog, path)
    app = build_app(settings)
    report = ingest_file(path, app.catalog, roots=[OPENCLIPART_DIR])
    assert not report.bad, report.bad
    app.encoder.start()
    app.indexer.drain()
    server = BackgroundServer(app)
    addr = server.start()
    channel = grpc.insecure_channel(addr)
    try:
        yield Running(
            addr=addr,
            app=app,
            catalog=catalog,
            channel=channel,
            search=rpc.ProductSearchStub(channel),
            writes=rpc.CatalogStub(channel),
            data_dir=data_dir,
        )
    finally:
        channel.close()
        server.stop()
        app.close()
