"""A running server (real SQLite, qdrant-edge and gRPC health; the fast deterministic encoder)
reports a stuck indexer through gRPC health and metrics, recovers by itself, and finds and
repairs SQL/vector drift through its periodic self-check without any manual reconcile."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from backend.app import App, build_app
from backend.config import load_settings
from backend.domain.ingest import ingest_file
from backend.domain.payload import product_payload
from backend.domain.reconcile import Reconciler
from backend.domain.types import Product, ProductInput
from backend.stores.catalog.repository import InventoryChange
from backend.stores.vectors.base import PayloadPatch, PointPayload, VectorPoint, point_id
from backend.transport.grpc.server import SERVICE_NAMES, BackgroundServer
from tests.fakes import FAKE_VERSION, FakeEncoder
from tests.integration.test_crash_safety import make_catalog

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CATALOG_SERVICE = SERVICE_NAMES[1]


@dataclass
class Live:
    app: App
    encoder: FakeEncoder
    health: health_pb2_grpc.HealthStub

    def status(self, service: str = "") -> int:
        request = health_pb2.HealthCheckRequest(service=service)
        return int(self.health.Check(request, timeout=5).status)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _metric(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    settings = load_settings(
        data_dir=tmp_path / "data", grpc_port=0, indexer_poll_ms=20, indexer_stall_s=1.0,
        selfcheck_interval_s=0.05, selfcheck_batch=5, auth={"enabled": False})
    encoder = FakeEncoder(delay_s=0)
    app = build_app(settings, encoder=encoder)  # type: ignore[arg-type]
    ingest_file(make_catalog(tmp_path / "src", 12), app.catalog)
    server = BackgroundServer(app)
    addr = server.start()
    channel = grpc.insecure_channel(addr)
    try:
        yield Live(app, encoder, health_pb2_grpc.HealthStub(channel))
    finally:
        channel.close()
        server.stop()
        app.close()


def _clean(app: App) -> bool:
    report = Reconciler(app.catalog, app.vectors, app.settings.collection, FAKE_VERSION).check()
    return report.pending == 0 and report.differences == 0 and report.products == 12


def test_health_turns_not_serving_while_the_indexer_is_stuck(live: Live) -> None:
    _wait(lambda: _clean(live.app), 30, "the initial catalog to be indexed")
    # A slow first pass may have been reported as a stall; indexed, the server is healthy.
    _wait(lambda: live.status() == SERVING, 10, "health to report serving once indexed")
    assert _metric("prodsearch_indexer_healthy") == 1.0

    # The encoder wedges in the middle of a pass (as a hung image read did).
    release = threading.Event()
    encode_many = live.encoder.encode_many

    def wedged(images: Any, texts: Any) -> Any:
        release.wait(60)
        return encode_many(images, texts)

    live.encoder.encode_many = wedged  # type: ignore[method-assign]
    product = next(live.app.catalog.iter_products())[0]
    live.app.catalog.upsert_products([_retitled(product, "wedged item")])
    live.app.index_wakeup.set()
    took = _wait(lambda: live.status() == NOT_SERVING, 10, "NOT_SERVING")
    assert took >= 0.5  # not before the configured stall time has passed
    assert live.status(CATALOG_SERVICE) == NOT_SERVING
    assert live.status(SERVICE_NAMES[0]) == SERVING  # searches still answer
    assert _metric("prodsearch_indexer_healthy") == 0.0
    assert _metric("prodsearch_indexer_seconds_since_progress") >= 1.0

    live.encoder.encode_many = encode_many  # type: ignore[method-assign]
    release.set()
    _wait(lambda: live.status() == SERVING, 10, "SERVING again")
    assert live.status(CATALOG_SERVICE) == SERVING
    assert _metric("prodsearch_indexer_healthy") == 1.0
    _wait(lambda: _clean(live.app), 10, "the wedged write to be indexed")


def test_health_turns_not_serving_while_every_pass_fails(live: Live) -> None:
    _wait(lambda: _clean(live.app), 30, "the initial catalog to be indexed")
    vectors: Any = live.app.vectors
    upsert = vectors.upsert

    def broken(collection: str, points: list[VectorPoint]) -> None:
        raise ConnectionError("vector store unreachable")

    vectors.upsert = broken
    try:
        product = next(live.app.catalog.iter_products())[0]
        live.app.catalog.upsert_products([_retitled(product, "failing item")])
        live.app.index_wakeup.set()
        _wait(lambda: live.status() == NOT_SERVING, 10, "NOT_SERVING")
    finally:
        vectors.upsert = upsert
    _wait(lambda: live.status() == SERVING, 10, "SERVING again")
    _wait(lambda: _clean(live.app), 10, "the failed write to be indexed")


def test_self_check_repairs_drift_by_itself(live: Live) -> None:
    app = live.app
    _wait(lambda: _clean(app), 30, "the initial catalog to be indexed")
    found = {k: _metric("prodsearch_selfcheck_drift_found_total", kind=k)
             for k in ("missing", "stale", "orphans", "drift")}
    repaired = {k: _metric("prodsearch_selfcheck_drift_repaired_total", kind=k)
                for k in found}
    rounds = _metric("prodsearch_selfcheck_rounds_total")

    collection = app.vectors.resolve(app.settings.collection)
    a, b, c, d, e = next(app.catalog.iter_products())[:5]
    unit = np.ones(8, dtype=np.float32) / np.sqrt(8)
    # Behind the indexer's back: a lost point, an old model's point, a point of an unknown
    # product and one at an image position the product lacks, a payload that lies, and a
    # deleted product whose points stayed (its delete was marked done without effect).
    app.vectors.delete_points(collection, [point_id(a.product_id, 0, FAKE_VERSION)])
    app.vectors.upsert(collection, [
        VectorPoint(point_id(b.product_id, 0, "old-model"), {"image": unit, "text": unit},
                    product_payload(b, 0, "old-model")),
        VectorPoint(point_id("ghost", 0, FAKE_VERSION), {"image": unit, "text": unit},
                    _payload_of("ghost", b)),
        VectorPoint(point_id(d.product_id, 3, FAKE_VERSION), {"image": unit, "text": unit},
                    product_payload(d, 3, FAKE_VERSION)),
    ])
    app.vectors.set_payload(collection, [PayloadPatch(c.product_id, {"price": 999.0})])
    app.catalog.delete_products([e.product_id])
    app.catalog.mark_done([i.id for i in app.catalog.claim_outbox(100)])
    app.catalog.update_inventory([InventoryChange(a.product_id, price=3.0)])  # in flight

    _wait(lambda: Reconciler(app.catalog, app.vectors, app.settings.collection, FAKE_VERSION)
          .check().differences == 0 and app.catalog.pending_count() == 0,
          30, "the self-check to repair every difference")
    report = Reconciler(app.catalog, app.vectors, app.settings.collection, FAKE_VERSION).check()
    assert report.products == 11 and report.points == 11
    assert app.vectors.get_vectors(collection, e.product_id, "text") == []
    assert app.catalog.get_product(c.product_id).price != 999.0
    _wait(lambda: _metric("prodsearch_selfcheck_rounds_total") > rounds + 1, 10, "a round")
    now_found = {k: _metric("prodsearch_selfcheck_drift_found_total", kind=k) - found[k]
                 for k in found}
    now_repaired = {k: _metric("prodsearch_selfcheck_drift_repaired_total", kind=k)
                    - repaired[k] for k in found}
    # a's lost point may be written back by the indexer (its inventory row) first.
    assert now_found["stale"] >= 1 and now_found["orphans"] >= 3 and now_found["drift"] >= 1
    assert now_repaired == {k: now_found[k] for k in found}, (now_found, now_repaired)


def _retitled(product: Product, title: str) -> ProductInput:
    return ProductInput(sku=product.sku, merchant=product.merchant, title=title,
                        category=product.category, price=product.price,
                        images=[ref.uri for ref in product.images],
                        inventory=product.inventory)


def _payload_of(product_id: str, template: Product) -> PointPayload:
    payload = product_payload(template, 0, FAKE_VERSION)
    payload.product_id = product_id
    return payload
