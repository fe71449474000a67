"""The gRPC server: grpc.aio, health (SERVING only once the models are warm), reflection,
a background indexer draining the outbox, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import grpc

from backend import metrics
from backend.app import App
from backend.config import TlsSettings
from backend.domain.indexer_health import IndexerHealth
from backend.security import ApiKeys
from backend.transport.grpc import edge, interceptors
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2_grpc as rpc
from backend.transport.grpc.servicers import CatalogServicer, ProductSearchServicer
from backend.transport.grpc.serving import (
    NOT_SERVING,
    SERVING,
    ServingHealth,
    bound_port,
    run_until_signalled,
)

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["ProductSearch"].full_name,
    pb.DESCRIPTOR.services_by_name["Catalog"].full_name,
)
# Health names that turn NOT_SERVING while the indexer is stuck: the server as a whole, and
# the writes (accepted, but they would not become searchable). Search itself still answers.
INDEXER_HEALTH_NAMES = ("", pb.DESCRIPTOR.services_by_name["Catalog"].full_name)


class Server:
    def __init__(self, app: App, host: str | None = None, port: int | None = None) -> None:
        self.app = app
        self._host = host or app.settings.grpc_host
        self._port = app.settings.grpc_port if port is None else port
        settings = app.settings
        interceptors.install_log_hygiene()
        for secret in interceptors.secret_values(settings):
            interceptors.register_secret(secret)
        self.keys: ApiKeys | None = None
        if settings.auth.enabled:
            self.keys = ApiKeys(app.catalog, settings.auth.cache_ttl_s)
        else:
            log.warning("API key authentication is DISABLED (auth.enabled=false): every "
                        "caller may search, read and write the whole catalog")
        limits = settings.limits
        self.gate = edge.HeavyWorkGate(
            limits.heavy_concurrency or edge.default_heavy_concurrency(), limits.heavy_queue)
        self._server = grpc.aio.server(
            interceptors=[interceptors.ServerInterceptor(self.keys, self.gate)],
            options=[
                ("grpc.max_receive_message_length", 2 * app.settings.search.max_image_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        self._health = ServingHealth(SERVICE_NAMES)
        self._indexer_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.indexer_health = IndexerHealth(app.settings.indexer_stall_s)
        self._stopping = asyncio.Event()
        self.port = 0
        self.metrics_http: Any = None  # the Prometheus HTTP server, when metrics_port is set

    async def start(self) -> int:
        s = self._server
        rpc.add_ProductSearchServicer_to_server(
            ProductSearchServicer(
                self.app.search, self.app.catalog, self.app.match, self.app.restock), s
        )
        rpc.add_CatalogServicer_to_server(CatalogServicer(self.app.catalog_service), s)
        self._health.add_to(s)
        tls = self.app.settings.tls
        if tls.enabled:
            self.port = s.add_secure_port(f"{self._host}:{self._port}", server_credentials(tls))
        else:
            if self.keys is not None and self._host not in ("127.0.0.1", "localhost", "::1"):
                log.warning("serving without TLS on %s: API keys travel in clear text",
                            self._host)
            self.port = s.add_insecure_port(f"{self._host}:{self._port}")
        bound_port(self.port, self._host, self._port)
        await self._health.set(NOT_SERVING)
        await s.start()
        log.info("listening on %s:%d; warming up models", self._host, self.port)
        if self.app.settings.metrics_port and self.metrics_http is None:
            self.metrics_http, _ = metrics.start_http(self.app.settings.metrics_host,
                                                      self.app.settings.metrics_port)
        await self._warm_up()
        await self._health.set(SERVING)
        if self.app.settings.indexer_enabled:
            self.indexer_health.revived()
            metrics.watch_indexer(self.indexer_health)
            self._indexer_task = asyncio.create_task(self._index_loop(), name="indexer")
            self._watch_task = asyncio.create_task(self._watch_indexer(), name="indexer-health")
        log.info("serving (model %s)", self.app.encoder.model_version)
        return self.port

    async def _warm_up(self) -> None:
        await asyncio.to_thread(self.app.encoder.start)
        self.app.search.ready = True

    async def _index_loop(self) -> None:
        app = self.app
        poll = app.settings.indexer_poll_ms / 1000
        check_every = app.settings.selfcheck_interval_s
        next_check = time.monotonic() + check_every
        while not self._stopping.is_set():
            try:
                stats = await asyncio.to_thread(
                    app.indexer.drain_once, app.settings.indexer_batch
                )
            except Exception:
                # The rows stay pending and are retried; a broken store must not stop serving.
                log.exception("indexer pass failed; retrying")
                await self._pause(1.0)
                continue
            self.indexer_health.passed(stats)
            metrics.observe_drain(stats.done, stats.unverified_products)
            if app.self_check is not None and check_every > 0 \
                    and time.monotonic() >= next_check:
                # Due even under a steady stream of writes; one bounded slice at a time.
                next_check = time.monotonic() + check_every
                await self._self_check_slice()
            if stats.done:
                continue  # more may be waiting
            if stats.rows:
                await self._pause(min(1.0, 5 * poll))  # nothing verified: do not spin
                continue
            woke = await asyncio.to_thread(app.index_wakeup.wait, poll)
            if woke:
                app.index_wakeup.clear()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _self_check_slice(self) -> None:
        assert self.app.self_check is not None
        try:
            report = await asyncio.to_thread(self.app.self_check.run_slice)
        except Exception:
            log.exception("self-check slice failed; the next one continues")
            return
        metrics.observe_selfcheck(report.products, report.found, report.repaired,
                                  report.round_done)

    async def _watch_indexer(self) -> None:
        """Health follows the indexer: NOT_SERVING while it is stuck, SERVING once it makes
        progress again. A loop that died is restarted."""
        health = self.indexer_health
        period = min(1.0, health.stall_s / 4)
        reported: str | None = None
        while not self._stopping.is_set():
            task = self._indexer_task
            if task is not None and task.done() and not self._stopping.is_set():
                error = task.exception() if not task.cancelled() else None
                health.died(f"the indexer loop stopped ({error!r}); restarted")
                log.error("indexer loop stopped (%r); restarting it", error)
                self._indexer_task = asyncio.create_task(self._index_loop(), name="indexer")
            reason = health.stuck()
            if (reason is None) != (reported is None):
                await self._health.set(NOT_SERVING if reason else SERVING,
                                       INDEXER_HEALTH_NAMES)
                if reason:
                    log.error("indexer stuck: %s; health NOT_SERVING", reason)
                else:
                    log.warning("indexer making progress again; health SERVING")
            reported = reason
            await self._pause(period)

    async def stop(self, grace: float | None = None) -> None:
        grace = self.app.settings.shutdown_grace_s if grace is None else grace
        self._stopping.set()
        self.app.index_wakeup.set()
        await self._health.stop(self._server, grace)
        if self.metrics_http is not None:
            self.metrics_http.shutdown()
            self.metrics_http.server_close()
            self.metrics_http = None
        if self._watch_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self._indexer_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._indexer_task
        await self.app.encoder.stop()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """TLS with the configured certificate; with a client CA, mutual TLS (clients must
    present a certificate that CA signed)."""
    from pathlib import Path

    pair = [(Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())]
    if tls.client_ca_file:
        return grpc.ssl_server_credentials(
            pair, root_certificates=Path(tls.client_ca_file).read_bytes(),
            require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


async def serve_forever(app: App) -> None:
    server = Server(app)

    async def stop() -> None:
        log.info("shutting down (grace %.1f s)", app.settings.shutdown_grace_s)
        await server.stop()

    await run_until_signalled(server.start, stop)


class BackgroundServer:
    """Runs a Server on its own event loop in a daemon thread: for tests, benchmarks and the
    embedded demo, where the caller stays synchronous."""

    def __init__(self, app: App, host: str = "127.0.0.1", port: int = 0) -> None:
        import threading

        self._app, self._host, self._port = app, host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="grpc-server")
        self._server: Server | None = None
        self.addr = ""

    def start(self, timeout: float = 300.0) -> str:
        self._thread.start()

        async def start() -> int:
            self._server = Server(self._app, self._host, self._port)
            return await self._server.start()

        port = asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout)
        self.addr = f"{self._host}:{port}"
        return self.addr

    def stop(self, grace: float = 0.5) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
