"""Bad input over the real gRPC server: each case gets a clear message and the right status
code, never INTERNAL, never a partial write. Plus random requests (hypothesis), bounded
encoder queues (RESOURCE_EXHAUSTED) and client deadlines (DEADLINE_EXCEEDED, work dropped)."""

from __future__ import annotations

import asyncio
import io
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from backend.demo import photo_of
from backend.domain.ingest import ingest_file
from backend.stores.catalog import migrate
from backend.stores.catalog.db import make_engine
from backend.stores.catalog.repository import CatalogRepository
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from encoders.batcher import DynamicBatcher
from tests.integration.conftest import Running

BAD = grpc.StatusCode.INVALID_ARGUMENT


def call_status(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def search(running: Running, **kwargs: Any) -> pb.SearchResponse:
    response: pb.SearchResponse = running.search.Search(pb.SearchRequest(**kwargs), timeout=60)
    return response


def _encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def item_image(running: Running) -> Image.Image:
    path = Path(str(running.catalog[4]["images"][0]))  # type: ignore[index]
    return Image.open(io.BytesIO(photo_of(path, seed=3))).convert("RGB")


def _bomb() -> bytes:
    # 20,000 x 20,000 pixels (400 megapixels) in a few KB.
    return _encode(Image.new("1", (20_000, 20_000)), "PNG", optimize=True)


def _images(item: Image.Image) -> dict[str, bytes]:
    jpeg = _encode(item, "JPEG", quality=90)
    png = _encode(item, "PNG")
    return {
        "truncated-jpeg": jpeg[: len(jpeg) // 3],
        "corrupt-jpeg": jpeg[:200] + bytes(range(256)) * 4 + jpeg[1300:],
        "truncated-png": png[: len(png) // 2],
        "non-image": b"%PDF-1.7 this is not an image at all" * 10,
        "bomb": _bomb(),
        "oversize": b"\xff\xd8\xff" + b"\x00" * (10 * 1024 * 1024 + 10),
    }


def test_undecodable_images_are_invalid_argument(running: Running, item_image: Image.Image
                                                 ) -> None:
    before = running.app.catalog.catalog_version()
    for name, data in _images(item_image).items():
        code, message = call_status(lambda data=data: search(running, image=data, top_k=3))
        assert code == BAD and message, name
        product = pb.Product(sku=f"BAD-{name}", merchant="bad-input", title="bad image",
                             images=[pb.ProductImage(content=data)])
        code, message = call_status(lambda product=product: running.writes.UpsertProducts(
            iter([product]), timeout=60))
        assert code == BAD and "image" in message, name
    assert running.app.catalog.catalog_version() == before
    assert running.app.catalog.find_by_sku("bad-input", "BAD-bomb") is None


def test_unusual_but_valid_images_are_searched(running: Running, item_image: Image.Image
                                               ) -> None:
    frames = [item_image, item_image.rotate(90), item_image.convert("L").convert("RGB")]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100,
                   loop=0)
    grey = np.asarray(item_image.convert("L"), dtype=np.uint16) * 257
    sixteen = Image.fromarray(grey.astype("<u2"))  # 16-bit greyscale ("I;16")
    cases = {
        "animated-gif": gif.getvalue(),
        "cmyk-jpeg": _encode(item_image.convert("CMYK"), "JPEG"),
        "16-bit-png": _encode(sixteen, "PNG"),
        "rgba-png": _encode(item_image.convert("RGBA"), "PNG"),
    }
    sku = running.catalog[4]["sku"]
    for name, data in cases.items():
        response = search(running, image=data, top_k=5)
        assert len(response.hits) == 5, name
        if name != "16-bit-png":  # grey: the colour is gone, the item may rank lower
            assert sku in {h.product.sku for h in response.hits}, name


def test_exif_rotation_is_applied(running: Running, item_image: Image.Image) -> None:
    upright = search(running, image=_encode(item_image, "JPEG"), top_k=3).hits
    # Pixels stored rotated, with EXIF orientation 6 ("rotate 90 CW to view"): the server
    # must see the upright picture.
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = item_image.transpose(Image.Transpose.ROTATE_90)
    rotated = search(running, image=_encode(stored, "JPEG", exif=exif), top_k=3).hits
    assert rotated[0].product.sku == upright[0].product.sku == running.catalog[4]["sku"]


@pytest.mark.parametrize("kwargs", [
    {"text": "cat", "filters": pb.Filters(price=pb.PriceRange(min=-1))},
    {"text": "cat", "filters": pb.Filters(price=pb.PriceRange(max=float("inf")))},
    {"text": "cat", "filters": pb.Filters(colours=[" "])},
    {"product_id": "x", "text": "cat"},
    {"text": "cat", "top_k": 101},
], ids=["negative-price", "inf-price", "blank-filter-value", "product-and-text", "top_k-101"])
def test_more_bad_searches(running: Running, kwargs: dict[str, Any]) -> None:
    code, message = call_status(lambda: search(running, **kwargs))
    assert code == BAD and message


def test_top_k_zero_means_the_default(running: Running) -> None:
    # proto3 cannot tell 0 from "not set": 0 is the documented default, not an error.
    assert len(search(running, text="cat", top_k=0).hits) == \
        running.app.settings.search.default_top_k


@pytest.mark.parametrize("product", [
    pb.Product(sku="W-1", merchant="bad-input", title="nan", price=pb.Money(amount=math.nan)),
    pb.Product(sku="W-2", merchant="bad-input", title="inf", price=pb.Money(amount=math.inf)),
    pb.Product(sku="", merchant="bad-input", title="no sku"),
    pb.Product(sku="W-3", merchant="", title="no merchant"),
    pb.Product(sku="W-4", merchant="bad-input", title=""),
    pb.Product(sku="W-5", merchant="bad-input", title="cur", price=pb.Money(currency="EURO")),
    pb.Product(sku="W-6", merchant="bad-input", title="stock",
               inventory=[pb.StockLevel(warehouse="w", quantity=-3)]),
    pb.Product(sku="W-7", merchant="bad-input", title="path",
               images=[pb.ProductImage(uri="/no/such/file.jpg")]),
], ids=["nan-price", "inf-price", "no-sku", "no-merchant", "no-title", "bad-currency",
        "negative-stock", "missing-image-file"])
def test_bad_writes_store_nothing(running: Running, product: pb.Product) -> None:
    before = running.app.catalog.catalog_version()
    good = pb.Product(sku="W-OK", merchant="bad-input", title="fine")
    code, message = call_status(lambda: running.writes.UpsertProducts(
        iter([good, product]), timeout=30))
    assert code == BAD and message
    # The good product of the same batch is not written either: one batch, one transaction.
    assert running.app.catalog.catalog_version() == before
    assert running.app.catalog.find_by_sku("bad-input", "W-OK") is None


def test_malformed_catalog_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    good = ('{"sku": "L-%d", "merchant": "m", "title": "t", "description": "", '
            '"category": "a/b", "brand": "", "size": "", "material": "", "colour": "", '
            '"price": 1.5, "currency": "EUR", "images": [], "inventory": []}')
    lines = [good % 1, "{not json", good.replace('"price": 1.5', '"price": "cheap"') % 2,
             '["a", "list"]', good % 3, good % 3]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    try:
        report = ingest_file(tmp_path / "c.jsonl", CatalogRepository(engine))
        # Line 6 repeats line 5's SKU: reported, the first one kept.
        assert [b.line for b in report.bad] == [2, 3, 4, 6]
        assert all(b.reason for b in report.bad) and "sku" in report.bad[-1].reason.lower()
        assert report.changed == 2
    finally:
        engine.dispose()


# ----------------------------------------------------------------- random requests


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_float = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.none()


@st.composite
def search_requests(draw: st.DrawFn) -> pb.SearchRequest:
    price = pb.PriceRange()
    lo, hi = draw(_float), draw(_float)
    if lo is not None:
        price.min = lo
    if hi is not None:
        price.max = hi
    where = draw(st.dictionaries(
        st.sampled_from(["size", "colour", "color", "brand", "merchant", "weight", " ", "x"]),
        _text, max_size=3))
    return pb.SearchRequest(
        text=draw(st.one_of(_text, st.just(""), st.just("x" * 1001))),
        image=draw(st.one_of(st.just(b""), st.binary(max_size=64),
                             st.just(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30))),
        product_id=draw(st.one_of(st.just(""), _text)),
        filters=pb.Filters(category=draw(st.one_of(st.just(""), _text)),
                           sizes=draw(st.lists(_text, max_size=2)), where=where, price=price,
                           in_stock_only=draw(st.booleans())),
        top_k=draw(st.integers(-2**31, 2**31 - 1) | st.integers(-2, 102)),
        page_token=draw(st.one_of(st.just(""), _text)),
        diversify=draw(st.booleans()),
        min_catalog_version=draw(st.integers(0, 2**62) | st.just(0)),
    )


@st.composite
def products(draw: st.DrawFn) -> pb.Product:
    return pb.Product(
        sku=draw(st.one_of(st.just(""), _text)),
        merchant="hyp-merchant",
        title=draw(st.one_of(st.just(""), _text)),
        category="hyp/" + draw(_text),
        colour=draw(_text),
        price=pb.Money(amount=draw(st.floats(allow_nan=True, allow_infinity=True)),
                       currency=draw(st.sampled_from(["", "EUR", "usd", "EURO", "€€€"]))),
        inventory=[pb.StockLevel(warehouse=draw(_text), quantity=draw(st.integers(-5, 5)))
                   for _ in range(draw(st.integers(0, 2)))],
        images=[pb.ProductImage(content=draw(st.binary(min_size=1, max_size=64)))
                for _ in range(draw(st.integers(0, 1)))],
        attributes=draw(st.dictionaries(_text, _text, max_size=2)),
    )


SEARCH_CODES = {grpc.StatusCode.OK, BAD, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.UNAVAILABLE}


def _state(running: Running) -> tuple[int, int]:
    catalog = running.app.catalog
    return catalog.catalog_version(), sum(len(page) for page in catalog.iter_products())


@pytest.fixture(scope="module")
def hyp_cleanup(running: Running) -> Iterator[None]:
    yield
    found = [p.product_id for page in running.app.catalog.iter_products() for p in page
             if p.merchant == "hyp-merchant"]
    if found:
        running.writes.DeleteProducts(pb.DeleteProductsRequest(product_ids=found), timeout=30)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=search_requests())
def test_random_searches_never_fail_internally(running: Running,
                                               request: pb.SearchRequest) -> None:
    code, message = call_status(lambda: running.search.Search(request, timeout=60))
    assert code in SEARCH_CODES, (code, message)
    if code != grpc.StatusCode.OK:
        assert message


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=st.lists(products(), min_size=0, max_size=3))
def test_random_writes_are_accepted_whole_or_change_nothing(
        running: Running, hyp_cleanup: None, batch: list[pb.Product]) -> None:
    before = _state(running)
    code, message = call_status(lambda: running.writes.UpsertProducts(iter(batch), timeout=60))
    assert code in {grpc.StatusCode.OK, BAD}, (code, message)
    if code != grpc.StatusCode.OK:
        assert message
        assert _state(running) == before


# ----------------------------------------------------------------- load and deadlines


class _SlowEncoder:
    """The real encoder behind a slow, bounded queue (1 at a time)."""

    def __init__(self, inner: Any, delay: float, max_queue: int = 2) -> None:
        self._inner = inner
        self.cancelled = 0
        self.batcher: DynamicBatcher[int, int] = DynamicBatcher(
            self._slow, max_batch_size=1, max_wait_ms=0, max_queue=max_queue, name="slow")
        self._delay = delay

    def _slow(self, items: list[int]) -> list[int]:
        time.sleep(self._delay)
        return items

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def encode(self, image: Any, text: str | None) -> Any:
        try:
            await self.batcher.submit(1)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await self._inner.encode(image, text)


def test_full_encoder_queue_answers_resource_exhausted_at_once(
        running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = _SlowEncoder(running.app.search._encoder, delay=0.4)
    monkeypatch.setattr(running.app.search, "_encoder", slow)
    try:
        def one(n: int) -> tuple[grpc.StatusCode, float]:
            start = time.perf_counter()
            code, _ = call_status(lambda: search(running, text=f"lamp {n}", top_k=3))
            return code, time.perf_counter() - start

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(one, range(12)))
        codes = [c for c, _ in results]
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 6
        assert codes.count(grpc.StatusCode.OK) >= 2
        # Shed at once, not after waiting in a queue.
        shed = [t for c, t in results if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert min(shed) < 0.4
    finally:
        slow.batcher.close(drain=False)


def test_client_deadline_is_honoured_and_work_abandoned(
        running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = _SlowEncoder(running.app.search._encoder, delay=1.5, max_queue=16)
    monkeypatch.setattr(running.app.search, "_encoder", slow)
    try:
        start = time.perf_counter()
        codes = []
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(lambda n=n: call_status(lambda: running.search.Search(
                pb.SearchRequest(text=f"lamp {n}"), timeout=0.5))) for n in range(3)]
            codes = [f.result()[0] for f in futures]
        assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 3
        assert time.perf_counter() - start < 1.4
        # The server abandoned the calls: the queued ones were cancelled before their turn.
        deadline = time.monotonic() + 5
        while slow.cancelled < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow.cancelled >= 2
        assert slow.batcher.queue_depth == 0
    finally:
        slow.batcher.close(drain=False)
