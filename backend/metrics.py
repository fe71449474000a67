"""Prometheus metrics and structured (JSON) logs.

Series (all prefixed `prodsearch_`):

- `rpc_requests_total{method,code}` and `rpc_latency_seconds{method,code}`: every gRPC call
  that passes the server interceptor (health and reflection are not counted);
- `encoder_batch_size` (histogram, one observation per forward pass of the dynamic batcher)
  and `encoder_queue_depth` (queries waiting for the batcher);
- `outbox_pending` and `outbox_oldest_pending_age_seconds`: the indexer's lag, read from the
  catalog at scrape time;
- `vector_store_latency_seconds{op}`: every vector-store call (search, upsert, ...);
- `indexer_healthy` (1, or 0 while stuck: health NOT_SERVING),
  `indexer_seconds_since_progress`, `indexer_rows_done_total` and
  `indexer_unverified_products_total` (writes whose points did not match SQL when read
  back: their rows stay pending and are redone);
- `vector_points` and `vector_indexed_vectors` (read from the store at scrape time), and the
  background index builds: `index_pending_writes`, `index_building`, `index_builds`,
  `index_build_failures`, `index_build_aborts`, `index_last_build_seconds`;
- `selfcheck_drift_found_total{kind}` and `selfcheck_drift_repaired_total{kind}` (kind:
  missing, stale, orphans, drift), `selfcheck_products_checked_total` and
  `selfcheck_rounds_total` (complete walks over the catalog and the vector store).

`start_http(...)` serves them over HTTP (`PRODSEARCH_METRICS_PORT`, 0 = off; bound to
`PRODSEARCH_METRICS_HOST`, 127.0.0.1 by default).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0)

RPC_REQUESTS = Counter("prodsearch_rpc_requests", "gRPC calls by method and status code",
                       ["method", "code"])
RPC_LATENCY = Histogram("prodsearch_rpc_latency_seconds", "gRPC call latency",
                        ["method", "code"], buckets=_LATENCY_BUCKETS)
ENCODER_BATCH = Histogram("prodsearch_encoder_batch_size",
                          "queries per forward pass of the dynamic batcher",
                          buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
ENCODER_QUEUE = Gauge("prodsearch_encoder_queue_depth", "queries waiting for the batcher")
VECTOR_LATENCY = Histogram("prodsearch_vector_store_latency_seconds",
                           "vector store call latency", ["op"], buckets=_LATENCY_BUCKETS)

INDEXER_ROWS_DONE = Counter("prodsearch_indexer_rows_done",
                            "outbox rows whose points were verified and marked done")
INDEXER_UNVERIFIED = Counter("prodsearch_indexer_unverified_products",
                             "products whose points did not match SQL after a write "
                             "(their rows stay pending)")
INDEXER_HEALTHY = Gauge("prodsearch_indexer_healthy",
                        "1 while the indexer makes progress, 0 while stuck")
INDEXER_IDLE = Gauge("prodsearch_indexer_seconds_since_progress",
                     "seconds since the indexer last indexed a row or found none pending")
DRIFT_FOUND = Counter("prodsearch_selfcheck_drift_found",
                      "differences between SQL and the vector store found by the self-check",
                      ["kind"])
DRIFT_REPAIRED = Counter("prodsearch_selfcheck_drift_repaired",
                         "differences the self-check repaired", ["kind"])
SELFCHECK_PRODUCTS = Counter("prodsearch_selfcheck_products_checked",
                             "products compared by the self-check")
SELFCHECK_ROUNDS = Counter("prodsearch_selfcheck_rounds",
                           "complete self-check walks over the catalog and the vector store")
for _kind in ("missing", "stale", "orphans", "drift"):
    DRIFT_FOUND.labels(_kind)
    DRIFT_REPAIRED.labels(_kind)

# Vector-store methods that are timed.
TIMED_VECTOR_OPS = ("search", "search_hybrid", "search_fused", "upsert", "delete_products",
                    "set_payload", "get_vectors", "delete_points", "count")


def observe_rpc(method: str, code: str, seconds: float) -> None:
    RPC_REQUESTS.labels(method, code).inc()
    RPC_LATENCY.labels(method, code).observe(seconds)


def instrument_vector_store(store: Any) -> Any:
    """Time the store's calls (instance attributes shadow the methods); returns the store."""
    if getattr(store, "_prodsearch_timed", False):
        return store
    for op in TIMED_VECTOR_OPS:
        method = getattr(store, op, None)
        if method is None:
            continue
        setattr(store, op, _timed(method, VECTOR_LATENCY.labels(op)))
    store._prodsearch_timed = True
    return store


def _timed(fn: Callable[..., Any], histogram: Any) -> Callable[..., Any]:
    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            histogram.observe(time.perf_counter() - start)

    return timed


def observe_drain(rows_done: int, unverified: int) -> None:
    INDEXER_ROWS_DONE.inc(rows_done)
    INDEXER_UNVERIFIED.inc(unverified)


def observe_selfcheck(products: int, found: dict[str, int], repaired: dict[str, int],
                      round_done: bool) -> None:
    SELFCHECK_PRODUCTS.inc(products)
    for kind, n in found.items():
        DRIFT_FOUND.labels(kind).inc(n)
    for kind, n in repaired.items():
        DRIFT_REPAIRED.labels(kind).inc(n)
    if round_done:
        SELFCHECK_ROUNDS.inc()


class _Health(Protocol):
    def stuck(self) -> str | None: ...

    def seconds_since_progress(self) -> float: ...


def watch_indexer(health: _Health) -> None:
    """Report this server's indexer health (the latest server started in the process)."""
    INDEXER_HEALTHY.set_function(lambda: 0.0 if health.stuck() else 1.0)
    INDEXER_IDLE.set_function(health.seconds_since_progress)


def instrument_encoder(encoder: object) -> None:
    """Batch sizes through the worker's `on_batch` hook and its queue depth (in-process
    encoders; a remote worker reports its own)."""
    if hasattr(encoder, "on_batch"):
        encoder.on_batch = ENCODER_BATCH.observe
    if hasattr(encoder, "queue_depth"):
        ENCODER_QUEUE.set_function(lambda: float(getattr(encoder, "queue_depth", 0)))


class _Outbox(Protocol):
    def pending_count(self) -> int: ...

    def oldest_pending_age_s(self) -> float | None: ...


class OutboxCollector(Collector):
    """The indexer's lag, read from the catalog when scraped."""

    def __init__(self, catalog: _Outbox) -> None:
        self._catalog = catalog

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            pending = self._catalog.pending_count()
            age = self._catalog.oldest_pending_age_s() or 0.0
        except Exception:
            log.exception("outbox metrics unavailable")
            return
        yield GaugeMetricFamily("prodsearch_outbox_pending",
                                "catalog changes not yet in the vector store", value=pending)
        yield GaugeMetricFamily("prodsearch_outbox_oldest_pending_age_seconds",
                                "age of the oldest change not yet indexed (0 when none)",
                                value=age)


class _IndexState(Protocol):
    @property
    def points(self) -> int: ...

    @property
    def indexed_vectors(self) -> int: ...


class _Indexed(Protocol):
    def index_state(self, collection: str) -> _IndexState: ...


class _Maintainer(Protocol):
    def state(self) -> Any: ...


class VectorIndexCollector(Collector):
    """The vector index's state, read when scraped: points, indexed vectors, and the
    background builds (backend/domain/index_maintainer.py)."""

    def __init__(self, vectors: _Indexed, collection: str,
                 maintainer: _Maintainer | None) -> None:
        self._vectors = vectors
        self._collection = collection
        self._maintainer = maintainer

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            index = self._vectors.index_state(self._collection)
        except Exception:
            log.debug("vector index metrics unavailable", exc_info=True)
        else:
            yield GaugeMetricFamily("prodsearch_vector_points",
                                    "points in the vector collection", value=index.points)
            yield GaugeMetricFamily("prodsearch_vector_indexed_vectors",
                                    "vectors in the collection's HNSW index",
                                    value=index.indexed_vectors)
        if self._maintainer is None:
            return
        state = self._maintainer.state()
        yield GaugeMetricFamily("prodsearch_index_pending_writes",
                                "points written since the last background index build",
                                value=state.pending_writes)
        yield GaugeMetricFamily("prodsearch_index_building",
                                "1 while a background index build runs",
                                value=1.0 if state.building else 0.0)
        yield GaugeMetricFamily("prodsearch_index_builds",
                                "background index builds finished", value=state.builds)
        yield GaugeMetricFamily("prodsearch_index_build_failures",
                                "background index builds that failed", value=state.failures)
        yield GaugeMetricFamily("prodsearch_index_build_aborts",
                                "background index builds given up because of the writes made "
                                "meanwhile (retried later)", value=state.aborts)
        yield GaugeMetricFamily("prodsearch_index_last_build_seconds",
                                "duration of the last background index build",
                                value=state.last_build_s)


_index_collector: VectorIndexCollector | None = None


def watch_vector_index(vectors: _Indexed, collection: str, maintainer: _Maintainer | None,
                       registry: CollectorRegistry = REGISTRY) -> None:
    """Report this process's vector index (replaces a previous one, like the outbox)."""
    global _index_collector
    with _outbox_lock:
        if _index_collector is not None:
            registry.unregister(_index_collector)
        _index_collector = VectorIndexCollector(vectors, collection, maintainer)
        registry.register(_index_collector)


_outbox_lock = threading.Lock()
_outbox: OutboxCollector | None = None


def watch_outbox(catalog: _Outbox, registry: CollectorRegistry = REGISTRY) -> None:
    """Report this catalog's outbox lag (replaces a previous one: one catalog per process)."""
    global _outbox
    with _outbox_lock:
        if _outbox is not None:
            registry.unregister(_outbox)
        _outbox = OutboxCollector(catalog)
        registry.register(_outbox)


def start_http(host: str, port: int) -> tuple[Any, int]:
    """Serve /metrics on host:port (0 picks a free port) in a daemon thread; returns the
    HTTP server (call `.shutdown()` to stop) and the port bound."""
    server, _ = start_http_server(port, addr=host)
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return server, bound


# ------------------------------------------------------------------------------- JSON logs


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id (the gRPC call's id,
    '-' outside calls), and exc for tracebacks (already redacted by the log hygiene)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime(datefmt or "%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
