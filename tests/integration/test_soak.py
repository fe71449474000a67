"""Soak: several clients write (upserts with uploaded images, inventory and price updates,
deletes) and search while the `serve` process is SIGKILLed at random moments and restarted,
at least 10 times. Afterwards, with no manual reconcile: every acknowledged write is in SQL
(the last acknowledged state of every product), and the vector store holds exactly the SQL
catalog (0 missing, stale, orphaned or drifted points, nothing pending). During the run, a
search that passed `min_catalog_version` must find the write it asked for, and no call may
end in INTERNAL or UNKNOWN.

The server is the real command (`backend.cli.main(["serve"])`: SQLite, outbox, indexer,
self-check, qdrant-edge, gRPC) in a subprocess; only the encoder is the fast deterministic
one of test_crash_safety, so that the run takes about two minutes of CPU instead of hours.
Run as `python -m tests.integration.test_soak serve` for the child.
"""

from __future__ import annotations

import io
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2_grpc as rpc

pytestmark = [pytest.mark.slow, pytest.mark.soak]

MIN_KILLS = 10
CLIENTS = 4
SKUS_PER_CLIENT = 12
CATEGORY = "soak/items"
# Calls that may fail while the server is down or restarting; anything else is a defect.
EXPECTED_FAILURES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                     grpc.StatusCode.CANCELLED}


def _child_serve() -> int:
    import backend.app
    from backend import cli
    from tests.integration.test_crash_safety import FakeEncoder

    # Slow enough that writes queue up behind the indexer and batches mix operations.
    backend.app.make_encoder = lambda settings: FakeEncoder(delay_s=0.02)  # type: ignore
    return cli.main(["serve"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _png(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (20, 20), (rng.randrange(256), rng.randrange(256), 90))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _search_text(title: str) -> str:
    """The text the encoder sees for a soak product (Product.text_for_encoding)."""
    return f"{title} . {CATEGORY.replace('/', ' ')}"


@dataclass
class Expected:
    product_id: str
    title: str = ""
    price: float = 0.0
    quantity: int = 0
    deleted: bool = False


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: int = 0
    retries: int = 0
    searches: int = 0
    ryw_checked: int = 0
    defects: list[str] = field(default_factory=list)

    def defect(self, text: str) -> None:
        with self.lock:
            self.defects.append(text)


class Server:
    def __init__(self, data_dir: Path, port: int, log: Path) -> None:
        self.data_dir, self.port, self.log = data_dir, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.addr = f"127.0.0.1:{port}"

    def start(self, timeout: float = 90.0) -> None:
        env = dict(os.environ)
        env.pop("PRODSEARCH_DATABASE_URL", None)
        env.pop("PRODSEARCH_QDRANT_URL", None)
        env.update({
            "PYTHONUNBUFFERED": "1", "PRODSEARCH_DATA_DIR": str(self.data_dir),
            "PRODSEARCH_GRPC_PORT": str(self.port), "PRODSEARCH_AUTH__ENABLED": "false",
            "PRODSEARCH_INDEXER_BATCH": "16", "PRODSEARCH_INDEXER_POLL_MS": "50",
            "PRODSEARCH_SELFCHECK_INTERVAL_S": "1", "PRODSEARCH_SELFCHECK_BATCH": "20",
            "PRODSEARCH_INDEXER_FLUSH_INTERVAL_S": "2", "PRODSEARCH_LOG_LEVEL": "WARNING",
            "PRODSEARCH_SHUTDOWN_GRACE_S": "1",
        })
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.test_soak", "serve"],
                stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=Path(__file__).resolve().parents[2])
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.addr) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise AssertionError("server did not become SERVING:\n" + self.log.read_text()[-3000:])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


class Writer(threading.Thread):
    """Owns its SKUs (so its acknowledged writes define their expected state) and retries an
    unanswered write until it is acknowledged: every write is idempotent."""

    def __init__(self, n: int, addr: str, stop: threading.Event, tally: Tally) -> None:
        super().__init__(name=f"writer-{n}", daemon=True)
        self.n, self.stop_event, self.tally = n, stop, tally
        self.rng = random.Random(1000 + n)
        self.merchant = f"soak-m{n}"
        self.expected: dict[str, Expected] = {}
        self.channel = grpc.insecure_channel(addr)
        self.writes = rpc.CatalogStub(self.channel)
        self.search = rpc.ProductSearchStub(self.channel)
        self.revision = 0

    def _until_acked(self, call: object, request: object) -> object:
        while True:
            try:
                if isinstance(request, list):
                    return call(iter(request), timeout=10)  # type: ignore[operator]
                return call(request, timeout=10)  # type: ignore[operator]
            except grpc.RpcError as exc:
                if exc.code() not in EXPECTED_FAILURES:
                    self.tally.defect(f"{self.name}: {exc.code()} {exc.details()}")
                    raise
                with self.tally.lock:
                    self.tally.retries += 1
                time.sleep(0.2)

    def upsert(self) -> None:
        skus = self.rng.sample([f"S{self.n}-{i}" for i in range(SKUS_PER_CLIENT)],
                               self.rng.randint(1, 3))
        batch = []
        for sku in skus:
            self.revision += 1
            title = f"soak {sku} revision {self.revision}"
            batch.append(pb.Product(
                sku=sku, merchant=self.merchant, title=title, category=CATEGORY,
                price=pb.Money(amount=float(self.rng.randint(1, 500)), currency="EUR"),
                images=[pb.ProductImage(content=_png(hash((sku, self.revision))))],
                inventory=[pb.StockLevel(warehouse="w1", bin="A",
                                         quantity=self.rng.randint(0, 5))]))
        reply = self._until_acked(self.writes.UpsertProducts, batch)
        assert isinstance(reply, pb.UpsertProductsResponse)
        for product, pid in zip(batch, reply.product_ids, strict=True):
            self.expected[product.sku] = Expected(pid, product.title, product.price.amount,
                                                  product.inventory[0].quantity)
        version = reply.catalog_version
        if self.rng.random() < 0.5:
            # Stock changes right behind the upsert, likely in the same indexer batch.
            version = self.inventory(batch[0].sku)
        self._read_your_write(batch[0].title, reply.product_ids[0], version)

    def _live(self) -> list[str]:
        return [sku for sku, e in self.expected.items() if not e.deleted]

    def inventory(self, sku: str | None = None) -> int:
        """Returns the acknowledged catalog version (0 when there was nothing to update)."""
        live = self._live()
        if not live:
            return 0
        sku = sku or self.rng.choice(live)
        e = self.expected[sku]
        quantity = self.rng.randint(0, 5)
        price = float(self.rng.randint(1, 500)) if self.rng.random() < 0.5 else None
        update = pb.InventoryUpdate(product_id=e.product_id, warehouse="w1", bin="A",
                                    quantity=quantity)
        if price is not None:
            update.price.CopyFrom(pb.Money(amount=price, currency="EUR"))
        reply = self._until_acked(self.writes.UpdateInventory, pb.UpdateInventoryRequest(
            updates=[update]))
        assert isinstance(reply, pb.UpdateInventoryResponse)
        e.quantity = quantity
        e.price = e.price if price is None else price
        return int(reply.catalog_version)

    def delete(self) -> None:
        live = self._live()
        if not live:
            return
        e = self.expected[self.rng.choice(live)]
        self._until_acked(self.writes.DeleteProducts,
                          pb.DeleteProductsRequest(product_ids=[e.product_id]))
        e.deleted = True

    def _read_your_write(self, title: str, product_id: str, version: int) -> None:
        """Once the server says `version` is indexed, the product must be found by its
        text; "not indexed yet" and a server that is down are fine."""
        # explain: the hit's dense cosine tells the new revision's vector from an old one
        # (the fused score of a hybrid query is a rank score, not a cosine).
        request = pb.SearchRequest(text=_search_text(title), top_k=1,
                                   min_catalog_version=version, explain=True)
        for _ in range(20):
            try:
                reply = self.search.Search(request, timeout=5)
            except grpc.RpcError as exc:
                if exc.code() not in EXPECTED_FAILURES:
                    self.tally.defect(f"search: {exc.code()} {exc.details()}")
                    return
                time.sleep(0.1)
                continue
            with self.tally.lock:
                self.tally.ryw_checked += 1
            top = reply.hits[0].product if reply.hits else None
            cosine = reply.hits[0].score_parts.get("dense_text", 0.0) if reply.hits else 0.0
            if top is None or top.product_id != product_id or cosine < 0.999:
                self.tally.defect(
                    f"read-your-writes: version {version} reported indexed "
                    f"(indexed {reply.catalog_version}) but {product_id} ({title!r}) "
                    f"is not the top hit with its new text: {top.product_id if top else None} "
                    f"(dense cosine {cosine:.4f})")
            return

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                roll = self.rng.random()
                if roll < 0.5 or not self._live():
                    self.upsert()
                elif roll < 0.85:
                    self.inventory()
                else:
                    self.delete()
                with self.tally.lock:
                    self.tally.acked += 1
        except Exception as exc:  # recorded, and the test fails on it
            self.tally.defect(f"{self.name} crashed: {exc!r}")
        finally:
            self.channel.close()


def _searcher(addr: str, stop: threading.Event, tally: Tally) -> None:
    rng = random.Random(7)
    with grpc.insecure_channel(addr) as channel:
        search = rpc.ProductSearchStub(channel)
        while not stop.is_set():
            request = pb.SearchRequest(
                text=f"soak S{rng.randrange(CLIENTS)}-{rng.randrange(SKUS_PER_CLIENT)}",
                top_k=rng.choice([1, 10, 50]),
                filters=pb.Filters(category=CATEGORY) if rng.random() < 0.3 else None)
            try:
                search.Search(request, timeout=5)
                with tally.lock:
                    tally.searches += 1
            except grpc.RpcError as exc:
                unknown_yet = (exc.code() == grpc.StatusCode.NOT_FOUND
                               and "unknown category" in (exc.details() or ""))
                if exc.code() not in EXPECTED_FAILURES and not unknown_yet:
                    tally.defect(f"search: {exc.code()} {exc.details()}")
                time.sleep(0.2)


def _wait_drained(data_dir: Path, timeout: float) -> None:
    from backend.stores.catalog.db import make_engine
    from backend.stores.catalog.repository import CatalogRepository

    engine = make_engine(f"sqlite:///{(data_dir / 'catalog.sqlite3').resolve()}")
    try:
        catalog = CatalogRepository(engine)
        deadline = time.monotonic() + timeout
        while catalog.pending_count() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert catalog.pending_count() == 0, "the outbox did not drain"
    finally:
        engine.dispose()


def test_sigkill_soak_loses_nothing_and_leaves_no_drift(tmp_path: Path) -> None:
    from backend.domain.reconcile import Reconciler
    from backend.stores.catalog.db import make_engine
    from backend.stores.catalog.repository import CatalogRepository
    from backend.stores.vectors.edge import EdgeVectorStore
    from tests.integration.test_crash_safety import FAKE_VERSION

    started = time.monotonic()
    data_dir = tmp_path / "data"
    server = Server(data_dir, _free_port(), tmp_path / "serve.log")
    server.start()
    stop = threading.Event()
    tally = Tally()
    writers = [Writer(n, server.addr, stop, tally) for n in range(CLIENTS)]
    searcher = threading.Thread(target=_searcher, args=(server.addr, stop, tally), daemon=True)
    for thread in [*writers, searcher]:
        thread.start()
    rng = random.Random(99)
    kills = 0
    try:
        while kills < MIN_KILLS:
            time.sleep(rng.uniform(0.5, 2.5))
            server.kill()
            kills += 1
            time.sleep(rng.uniform(0, 0.5))  # clients meet a dead server for a while
            server.start()
        time.sleep(2.0)  # some more traffic on the last server
    finally:
        stop.set()
        for thread in [*writers, searcher]:
            thread.join(60)
    try:
        assert not tally.defects, tally.defects[:10]
        _wait_drained(data_dir, 60)
    finally:
        server.stop()
    print(f"soak: {kills} kills, {tally.acked} acknowledged writes, {tally.retries} retried, "
          f"{tally.searches} searches, {tally.ryw_checked} read-your-writes checks, "
          f"{server.log.read_text().count('Traceback')} tracebacks in the server log, "
          f"{time.monotonic() - started:.0f} s")
    # Enough real traffic to mean something (the checks below are the point): each restart
    # now also opens the photo descriptor index, so fewer writes fit between the kills.
    assert tally.acked >= 50 and tally.ryw_checked >= 10

    engine = make_engine(f"sqlite:///{(data_dir / 'catalog.sqlite3').resolve()}")
    vectors = EdgeVectorStore(data_dir / "vectors")
    try:
        catalog = CatalogRepository(engine)
        # 0 acknowledged writes lost in SQL: every product is as its last acknowledged write.
        lost = []
        for writer in writers:
            for sku, e in writer.expected.items():
                product = catalog.find_by_sku(writer.merchant, sku)
                if e.deleted:
                    if product is not None:
                        lost.append(f"{sku}: deleted, but still live")
                    continue
                got = None if product is None else (
                    product.product_id, product.title, product.price,
                    product.inventory[0].quantity)
                if got != (e.product_id, e.title, e.price, e.quantity):
                    lost.append(f"{sku}: expected {e}, SQL has {got}")
        assert not lost, lost[:10]
        # The vector store is the SQL catalog, with nothing left to the operator.
        report = Reconciler(catalog, vectors, "products", FAKE_VERSION).check()
        assert report.pending == 0 and report.differences == 0, report.summary()
        live = sum(not e.deleted for w in writers for e in w.expected.values())
        assert report.products == live and report.points == live
    finally:
        vectors.close()
        engine.dispose()


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        sys.exit(_child_serve())
    sys.exit(f"usage: {sys.argv[0]} serve")
