"""Uploaded images: unique temporary files and an atomic rename (concurrent uploads of one
image never collide), nothing left on disk by a rejected call, and a streamed UpsertProducts
that holds one message in memory, not the whole stream."""

from __future__ import annotations

import asyncio
import io
import math
import os
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from backend.domain.catalog import CatalogService, ImageBlobStore
from backend.domain.types import ProductInput
from backend.errors import InvalidInput
from backend.security.paths import ImagePathPolicy
from backend.stores.catalog.repository import CatalogRepository
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from backend.transport.grpc.servicers import CatalogServicer


def png(size: tuple[int, int] = (32, 32), seed: int = 0, noise: bool = False) -> bytes:
    if noise:  # incompressible: the PNG is about as big as its pixels
        pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
        image = Image.fromarray(pixels, "RGB")
    else:
        image = Image.new("RGB", size, (seed % 256, 90, 160))
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@pytest.fixture
def blob_dir(tmp_path: Path) -> Path:
    return tmp_path / "images"


@pytest.fixture
def service(sqlite_catalog: CatalogRepository, blob_dir: Path) -> CatalogService:
    return CatalogService(sqlite_catalog, None, "products", ImageBlobStore(blob_dir),  # type: ignore[arg-type]
                          max_image_bytes=8 << 20, max_image_pixels=40_000_000,
                          image_paths=ImagePathPolicy([], 1 << 20))


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def product(sku: str, *images: bytes, **kwargs: Any) -> ProductInput:
    fields: dict[str, Any] = {"merchant": "acme", "title": f"item {sku}", **kwargs}
    return ProductInput(sku=sku, image_bytes=list(images), **fields)


# --------------------------------------------------------------------- concurrent uploads


def test_twelve_concurrent_uploads_of_one_image(service: CatalogService, blob_dir: Path,
                                                sqlite_catalog: CatalogRepository) -> None:
    data = png((400, 400), seed=7, noise=True)  # big enough that writes overlap
    start = threading.Barrier(12)
    errors: list[BaseException] = []
    ids: list[str] = []

    def upload(n: int) -> None:
        start.wait()
        try:
            ids.extend(o.product_id for o in service.upsert([product(f"C-{n}", data)]))
        except BaseException as exc:  # the test reports every failure, not the first
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(ids) == 12
    stored = files_under(blob_dir)
    assert [p.suffix for p in stored] == [".img"]  # one content-addressed file, no temp left
    assert stored[0].read_bytes() == data
    uris = {sqlite_catalog.get_product(pid).images[0].uri for pid in ids}
    assert uris == {str(stored[0])}


def test_blob_store_saves_concurrently_without_sharing_a_temp_file(
        blob_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A slow rename (a busy disk) keeps the window open in which a shared temp file breaks.
    real_replace = os.replace

    def slow_replace(src: Any, dst: Any) -> None:
        time.sleep(0.01)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", slow_replace)
    store = ImageBlobStore(blob_dir)
    data = png((400, 400), seed=3, noise=True)

    def save(start: threading.Barrier, results: list[str], errors: list[BaseException]
             ) -> None:
        start.wait()
        try:
            results.append(store.save(data))
        except BaseException as exc:
            errors.append(exc)

    for _ in range(3):
        start = threading.Barrier(12)
        results: list[str] = []
        errors: list[BaseException] = []
        threads = [threading.Thread(target=save, args=(start, results, errors))
                   for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == [] and len(set(results)) == 1
    assert [p.read_bytes() for p in files_under(blob_dir)] == [data]


# ------------------------------------------------------------ rejected calls leave nothing


REJECTED: dict[str, Callable[[], list[ProductInput]]] = {
    "duplicate-sku": lambda: [product("D-1", png(seed=1)), product("D-1", png(seed=2))],
    "nan-price": lambda: [product("N-1", png(seed=1), price=math.nan)],
    "bad-second-image": lambda: [product("B-1", png(seed=1)),
                                 product("B-2", png(seed=2), b"not an image")],
    "bad-merchant": lambda: [product("M-1", png(seed=1), merchant=" , ")],
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_a_rejected_upsert_leaves_no_image_file(
        service: CatalogService, blob_dir: Path, sqlite_catalog: CatalogRepository,
        case: str) -> None:
    with pytest.raises(InvalidInput):
        service.upsert(REJECTED[case]())
    assert files_under(blob_dir) == []
    assert sqlite_catalog.catalog_version() == 0


def test_a_failed_sql_write_removes_only_the_files_it_added(
        service: CatalogService, blob_dir: Path, sqlite_catalog: CatalogRepository,
        monkeypatch: pytest.MonkeyPatch) -> None:
    kept = png(seed=1)
    service.upsert([product("K-1", kept)])
    before = files_under(blob_dir)

    def broken(items: list[ProductInput]) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(sqlite_catalog, "upsert_products", broken)
    with pytest.raises(RuntimeError):
        service.upsert([product("K-2", kept, png(seed=2))])
    assert files_under(blob_dir) == before  # the stored product's image stays


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Context:
    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise _Aborted(code, message)


def _call(servicer: CatalogServicer, messages: AsyncIterator[pb.Product]) -> Any:
    return asyncio.run(servicer.UpsertProducts(messages, _Context()))  # type: ignore[arg-type]


def test_a_stream_refused_midway_leaves_no_image_file(service: CatalogService,
                                                      blob_dir: Path) -> None:
    async def messages() -> AsyncIterator[pb.Product]:
        for n in range(3):  # the third is one too many
            yield pb.Product(sku=f"S-{n}", merchant="acme", title="t",
                             images=[pb.ProductImage(content=png(seed=n))])

    with pytest.raises(_Aborted) as info:
        _call(CatalogServicer(service, max_batch=2), messages())
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert files_under(blob_dir) == []

    async def broken_stream() -> AsyncIterator[pb.Product]:
        yield pb.Product(sku="S-9", merchant="acme", title="t",
                         images=[pb.ProductImage(content=png(seed=9))])
        raise ConnectionResetError("client went away")

    with pytest.raises(_Aborted):
        _call(CatalogServicer(service), broken_stream())
    assert files_under(blob_dir) == []


@pytest.mark.parametrize("case", ["neither", "both"])
def test_an_image_entry_is_a_path_or_bytes(service: CatalogService, case: str) -> None:
    # A path the service accepts (an earlier upload), with valid bytes: still refused.
    stored = service.blobs.save(png(seed=5))
    entry = pb.ProductImage() if case == "neither" else pb.ProductImage(
        uri=stored, content=png(seed=6))

    async def messages() -> AsyncIterator[pb.Product]:
        yield pb.Product(sku="E-1", merchant="acme", title="t", images=[entry])

    with pytest.raises(_Aborted) as info:
        _call(CatalogServicer(service), messages())
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "image 0" in str(info.value)


# ----------------------------------------------------------------------- bounded memory


def test_a_streamed_upsert_holds_one_message_not_the_stream(service: CatalogService,
                                                            blob_dir: Path) -> None:
    image = png((700, 700), noise=True)  # ~1.5 MB
    count = 40  # ~60 MB streamed

    async def messages() -> AsyncIterator[pb.Product]:
        for n in range(count):
            yield pb.Product(sku=f"R-{n}", merchant="acme", title=f"item {n}",
                             images=[pb.ProductImage(content=image)])

    tracemalloc.start()
    try:
        reply = _call(CatalogServicer(service), messages())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply.upserted == count
    # Everything held at once would be count x the image; one message at a time is a few.
    assert peak < 8 * len(image), f"peak {peak / 1e6:.1f} MB for {len(image) / 1e6:.1f} MB"


def test_temporary_files_of_a_crashed_upload_are_removed_when_old(blob_dir: Path) -> None:
    incoming = blob_dir / "incoming"
    incoming.mkdir(parents=True)
    old, fresh = incoming / "old.part", incoming / "fresh.part"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    an_hour_ago = time.time() - ImageBlobStore.STALE_TEMP_S - 60
    os.utime(old, (an_hour_ago, an_hour_ago))
    ImageBlobStore(blob_dir)
    # Another server sharing the folder may still be writing the fresh one.
    assert sorted(p.name for p in incoming.iterdir()) == ["fresh.part"]
