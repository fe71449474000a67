"""Prometheus metrics scraped over HTTP on 127.0.0.1 from the running server after real calls,
and JSON log lines carrying the call's request id."""

from __future__ import annotations

import io
import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backend import metrics
from backend.demo import photo_of
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from tests.integration.conftest import Running

SEARCH = "/product_search.v1.ProductSearch/Search"


@pytest.fixture
def endpoint(running: Running) -> Iterator[str]:
    metrics.watch_outbox(running.app.catalog)
    app = running.app
    metrics.watch_vector_index(app.vectors, app.settings.collection, app.indexer.maintainer)
    server, port = metrics.start_http("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(series: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return series.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_endpoint_reports_real_calls(running: Running, endpoint: str) -> None:
    before = scrape(endpoint)
    photo = photo_of(Path(str(running.catalog[3]["images"][0])))  # type: ignore[index]
    for text in ("flower", "a red car", "小狗"):
        running.search.Search(pb.SearchRequest(text=text, top_k=3), timeout=30)
    running.search.Search(pb.SearchRequest(image=photo, top_k=3), timeout=30)
    with pytest.raises(grpc.RpcError) as bad:
        running.search.Search(pb.SearchRequest(text="x", top_k=1000), timeout=30)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A call is counted when the server finishes it, which can be just after the client has
    # its answer (an aborted call especially): wait briefly for the last one to land.
    deadline = time.monotonic() + 5
    while True:
        after = scrape(endpoint)
        counted = value(after, "prodsearch_rpc_requests_total", method=SEARCH,
                        code="INVALID_ARGUMENT") - value(
            before, "prodsearch_rpc_requests_total", method=SEARCH, code="INVALID_ARGUMENT")
        if counted >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("prodsearch_rpc_requests_total", method=SEARCH, code="OK") == 4
    assert delta("prodsearch_rpc_requests_total", method=SEARCH, code="INVALID_ARGUMENT") == 1
    assert delta("prodsearch_rpc_latency_seconds_count", method=SEARCH, code="OK") == 4
    assert delta("prodsearch_rpc_latency_seconds_sum", method=SEARCH, code="OK") > 0
    # Every search ran at least one forward pass of the batcher (the photo several views).
    assert delta("prodsearch_encoder_batch_size_count") >= 4
    assert delta("prodsearch_encoder_batch_size_sum") >= 4
    assert ("prodsearch_encoder_queue_depth", ()) in after
    # Three text queries (each one fused dense + lexical query) and the photo query's fused
    # dense list.
    assert delta("prodsearch_vector_store_latency_seconds_count", op="search_fused") >= 4
    assert ("prodsearch_outbox_pending", ()) in after
    assert ("prodsearch_outbox_oldest_pending_age_seconds", ()) in after
    # The vector index as the store reports it, and the background builder's state.
    points = running.app.vectors.index_state(running.app.settings.collection).points
    assert value(after, "prodsearch_vector_points") == points > 0
    assert ("prodsearch_vector_indexed_vectors", ()) in after
    builder = running.app.indexer.maintainer is not None  # off unless configured
    assert (("prodsearch_index_builds", ()) in after) == builder
    assert (("prodsearch_index_building", ()) in after) == builder


class _Lagging:
    """An outbox with 3 changes pending, the oldest 12.5 s old."""

    def pending_count(self) -> int:
        return 3

    def oldest_pending_age_s(self) -> float | None:
        return 12.5


def test_outbox_lag_is_reported(running: Running, endpoint: str) -> None:
    series = scrape(endpoint)
    # The running server's indexer keeps up: its outbox is (nearly always) empty.
    assert value(series, "prodsearch_outbox_pending") <= running.app.catalog.pending_count() + 5
    metrics.watch_outbox(_Lagging())
    try:
        series = scrape(endpoint)
    finally:
        metrics.watch_outbox(running.app.catalog)
    assert value(series, "prodsearch_outbox_pending") == 3
    assert value(series, "prodsearch_outbox_oldest_pending_age_seconds") == 12.5


def test_json_logs_carry_the_request_id(running: Running) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(metrics.JsonFormatter())
    calls = logging.getLogger("prodsearch.calls")
    old_level = calls.level
    calls.addHandler(handler)
    calls.setLevel(logging.DEBUG)
    try:
        running.search.Search(pb.SearchRequest(text="flower", top_k=2), timeout=30,
                              metadata=(("x-request-id", "req-json-1"),))
    finally:
        calls.removeHandler(handler)
        calls.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    mine = [d for d in lines if d["request_id"] == "req-json-1"]
    assert mine, lines
    assert mine[0]["logger"] == "prodsearch.calls" and mine[0]["level"] == "DEBUG"
    assert SEARCH in mine[0]["message"] and "OK" in mine[0]["message"]
    assert mine[0]["ts"].endswith("Z")
