"""The request edge on its own: string checks on every field of every request message,
malformed bytes, the limit on expensive calls, echoed values in error messages, and the
decoded-pixel limit of query photos."""

from __future__ import annotations

import asyncio
import io

import grpc
import pytest
from PIL import Image

from backend.errors import InvalidInput, NotFound, Overloaded, shown
from backend.transport.grpc import edge
from backend.transport.grpc.errors import MAX_MESSAGE_CHARS, status_for
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from encoders.preprocess import ImageDecodeError, decode_image


@pytest.mark.parametrize("message", [
    pb.GetProductRequest(product_id="a\x00b"),
    pb.GetProductRequest(sku="s", merchant="m\x00"),
    pb.SearchRequest(text="cat", filters=pb.Filters(category="\x00")),
    pb.SearchRequest(text="cat", filters=pb.Filters(brands=["ok", "b\x00"])),
    pb.SearchRequest(text="cat", filters=pb.Filters(where={"size\x00": "m"})),
    pb.SearchRequest(text="cat", filters=pb.Filters(where={"size": "\x00"})),
    pb.Product(sku="s", merchant="m", title="t", attributes={"k": "v\x00"}),
    pb.Product(sku="s", merchant="m", title="t",
               inventory=[pb.StockLevel(warehouse="W\x001")]),
    pb.Product(sku="s", merchant="m", title="t", images=[pb.ProductImage(uri="/a\x00")]),
    pb.DeleteProductsRequest(product_ids=["ok", "\x00"]),
    pb.UpdateInventoryRequest(updates=[pb.InventoryUpdate(product_id="p", warehouse="\x00")]),
    pb.MatchRequest(listing=pb.Product(title="x\x00")),
    pb.RestockRequest(warehouse="W1", bin="\x00"),
])
def test_nul_anywhere_is_refused_and_the_field_named(message: object) -> None:
    with pytest.raises(InvalidInput) as info:
        edge.check_message(message)  # type: ignore[arg-type]
    assert "NUL" in str(info.value) and "\x00" not in str(info.value)


def test_limits_per_field() -> None:
    edge.check_message(pb.Product(sku="s" * 255, title="t" * 4096, description="d" * 60_000))
    for message in (pb.GetProductRequest(product_id="p" * 100_000),
                    pb.Product(sku="s" * 256), pb.Product(title="t" * 4097),
                    pb.SearchRequest(page_token="x" * 257)):
        with pytest.raises(InvalidInput) as info:
            edge.check_message(message)
        assert len(str(info.value)) < 200


def test_ordinary_text_passes() -> None:
    edge.check_message(pb.SearchRequest(text="红色的花 — naïve café", filters=pb.Filters(
        category="apparel/shoes", where={"brand": "Acme"})))


def test_malformed_bytes_become_a_marker_not_an_exception() -> None:
    parse = edge.safe_deserializer(pb.SearchRequest.FromString)
    assert parse is not None
    assert parse(bytes.fromhex("1204fffec328")) is edge.MALFORMED
    assert parse(b"\x0a\x05ab") is edge.MALFORMED
    assert parse(pb.SearchRequest(text="cat").SerializeToString()).text == "cat"
    assert edge.safe_deserializer(None) is None


def test_malformed_warning_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    warn = edge._RateLimitedWarning(interval=60)
    caplog.set_level("WARNING", logger="prodsearch.edge")
    for _ in range(50):
        warn("/x/Y")
    assert len(caplog.records) == 1


@pytest.mark.parametrize("method,request_,expensive", [
    ("/product_search.v1.ProductSearch/Search", pb.SearchRequest(text="cat"), False),
    ("/product_search.v1.ProductSearch/Search", pb.SearchRequest(image=b"x"), True),
    ("/product_search.v1.ProductSearch/Search",
     pb.SearchRequest(text="cat", diversify=True), True),
    ("/product_search.v1.ProductSearch/GetProduct", pb.GetProductRequest(product_id="p"), False),
    ("/product_search.v1.ProductSearch/MatchProduct", pb.MatchRequest(), True),
    ("/product_search.v1.ProductSearch/FindRestockMatches", pb.RestockRequest(), True),
    ("/product_search.v1.Catalog/UpsertProducts", None, False),
    ("/product_search.v1.Catalog/UpdateInventory", pb.UpdateInventoryRequest(), False),
])
def test_which_calls_are_expensive(method: str, request_: object, expensive: bool) -> None:
    assert edge.is_expensive(method, request_) is expensive


def test_gate_admits_up_to_its_limit_queues_a_few_and_refuses_the_rest() -> None:
    async def scenario() -> list[str]:
        gate = edge.HeavyWorkGate(concurrency=2, queue=1)
        outcomes: list[str] = []

        async def call(n: int) -> None:
            try:
                await gate.acquire()
            except Overloaded:
                outcomes.append(f"{n}:refused")
                return
            try:
                outcomes.append(f"{n}:running")
                await asyncio.sleep(0.05)
            finally:
                gate.release()

        await asyncio.gather(*(call(n) for n in range(5)))
        return outcomes

    outcomes = asyncio.run(scenario())
    assert sorted(o for o in outcomes if o.endswith("refused")) == ["3:refused", "4:refused"]
    assert sorted(o for o in outcomes if o.endswith("running")) == [
        "0:running", "1:running", "2:running"]


def test_echoed_values_are_cut_and_status_details_bounded() -> None:
    big = "p" * 100_000
    assert len(shown(big)) < 120 and "100000 characters" in shown(big)
    assert shown("short") == "'short'"
    code, message = status_for(NotFound(f"product {big} not found"))
    assert code == grpc.StatusCode.NOT_FOUND and len(message) <= MAX_MESSAGE_CHARS


def _png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (20, 90, 200)).save(buf, "JPEG", quality=70)
    return buf.getvalue()


def test_small_png_declaring_too_many_pixels_is_refused_from_its_header() -> None:
    data = _png(6000)  # 36 megapixels in about 100 KB
    assert len(data) < 200_000
    with pytest.raises(ImageDecodeError, match="at most 16000000 pixels are decoded"):
        decode_image(data, max_bytes=len(data), max_decode_pixels=16_000_000)


def test_big_jpeg_is_decoded_at_a_smaller_scale_within_the_limit() -> None:
    image = decode_image(_jpeg(6000, 4000), max_decode_pixels=4_000_000)
    assert image.size[0] * image.size[1] <= 4_000_000 and image.size == (1500, 1000)


def test_odd_sized_big_jpeg_is_drafted_not_refused() -> None:
    image = decode_image(_jpeg(7745, 5164), max_decode_pixels=16_777_216)
    assert image.size == (3873, 2582)


def test_large_images_are_reduced_for_queries_like_jpeg_drafts() -> None:
    png = decode_image(_png(2000), draft_px=448)
    jpeg = decode_image(_jpeg(2000, 2000), draft_px=448)
    assert png.size == (500, 500) and jpeg.size == (500, 500)
    assert decode_image(_png(800), draft_px=448).size == (800, 800)
