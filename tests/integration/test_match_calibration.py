"""Match calibration in the catalog's life cycle, over a real gRPC server with the fast fake
encoder: a catalog with an oversized and a corrupt image still calibrates (both reported as
skipped, the configured pixel limit honoured) and MatchProduct answers; a calibration that
cannot be replaced stays in use; a changed catalog makes it stale."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from backend.app import App, build_app
from backend.config import load_settings
from backend.domain.ingest import ingest_file
from backend.domain.match_calibration import NotEnoughProducts
from backend.domain.match_model import MatchCalibration
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2_grpc as rpc
from backend.transport.grpc.server import BackgroundServer
from tests.fakes import FakeEncoder

PIXEL_LIMIT = 1_000_000  # below the default (40 MP): the oversized image is 1.2 MP
GOOD_ITEMS = 14


def picture(seed: int, size: tuple[int, int] = (96, 96)) -> Image.Image:
    """A distinct little picture: blocks of colour on a light ground."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size[1], size[0], 3), 230, dtype=np.uint8)
    for _ in range(6):
        x, y = rng.integers(0, size[0] - 20), rng.integers(0, size[1] - 20)
        pixels[y:y + 20, x:x + 20] = rng.integers(0, 255, 3)
    return Image.fromarray(pixels)


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@dataclass
class Served:
    app: App
    search: rpc.ProductSearchStub
    folder: Path
    skus: list[str]


def line(n: int, image: str, title: str) -> dict[str, object]:
    return {"sku": f"CAL-{n:03d}", "merchant": "north-shop", "title": title,
            "description": "", "category": "toys/blocks", "brand": "Acme",
            "size": ("S", "M", "L")[n % 3], "material": ("wood", "metal")[n % 2],
            "colour": ("red", "blue", "green")[n % 3], "price": 5.0 + n, "currency": "EUR",
            "images": [image], "inventory": []}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("calibration")
    lines = []
    for n in range(GOOD_ITEMS):
        picture(n).save(folder / f"item{n}.png")
        lines.append(line(n, f"item{n}.png", f"block toy number {n} {'abcdefghijklmn'[n]}"))
    # 1200 x 1000 = 1.2 MP: over the configured limit, well under the default one.
    picture(99, (1200, 1000)).save(folder / "poster.png")
    lines.append(line(GOOD_ITEMS, "poster.png", "oversized poster"))
    (folder / "broken.png").write_bytes(png(picture(98))[:60])  # a truncated PNG
    lines.append(line(GOOD_ITEMS + 1, "broken.png", "corrupt picture"))
    catalog = folder / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")

    # Dense photo matching: this is about the life cycle, and local-feature verification
    # of listings is covered with real images in test_match_restock.py.
    settings = load_settings(data_dir=folder / "data", grpc_port=0, indexer_poll_ms=50,
                             auth={"enabled": False},
                             search={"max_image_pixels": PIXEL_LIMIT, "local_features": False})
    app = build_app(settings, encoder=FakeEncoder())
    report = ingest_file(catalog, app.catalog, roots=[folder])
    assert not report.bad, report.bad
    server = BackgroundServer(app)
    addr = server.start()
    channel = grpc.insecure_channel(addr)
    try:
        deadline = time.monotonic() + 120
        while app.catalog.indexed_version() < report.catalog_version:
            assert time.monotonic() < deadline, "indexer did not catch up"
            time.sleep(0.05)
        yield Served(app, rpc.ProductSearchStub(channel), folder,
                     [str(x["sku"]) for x in lines])
    finally:
        channel.close()
        server.stop()
        app.close()


def match(s: Served, n: int) -> pb.MatchResponse:
    listing = pb.Product(title=f"block toy number {n}",
                         images=[pb.ProductImage(content=png(picture(n)))])
    response: pb.MatchResponse = s.search.MatchProduct(
        pb.MatchRequest(listing=listing, top_k=20), timeout=60)
    return response


def test_calibration_skips_bad_images_and_matching_answers(served: Served) -> None:
    s = served
    with pytest.raises(grpc.RpcError) as before:
        match(s, 3)
    assert before.value.code() == grpc.StatusCode.UNAVAILABLE
    assert s.app.calibrator.status().stale

    report = s.app.calibrator.calibrate(items=50)

    skipped = {x.sku: x.reason for x in report.skipped}
    assert set(skipped) == {f"CAL-{GOOD_ITEMS:03d}", f"CAL-{GOOD_ITEMS + 1:03d}"}
    assert f"limit of {PIXEL_LIMIT}" in skipped[f"CAL-{GOOD_ITEMS:03d}"]  # the configured one
    assert report.items == GOOD_ITEMS
    assert report.path.is_file()
    # Dedup's model (no photo to verify) is saved with it.
    assert MatchCalibration.load(report.path).without_verification is not None
    assert report.to_dict()["skipped_images"] == 2
    assert set(report.conditions) == {"easy", "hard"}
    # Held-out figures by k-fold over items: every item's listings are measured, once.
    assert report.metrics["items_held_out"] == GOOD_ITEMS
    for name in ("easy", "hard"):
        listings = int(report.conditions[name]["after"]["listings"])  # type: ignore[call-overload]
        assert listings == report.metrics["listings_per_condition"][name]  # type: ignore[index]
        assert listings >= 3 * GOOD_ITEMS  # SAME and two DIFFERENT listings per item
    assert len(report.cases) == report.metrics["pairs_held_out"]
    assert not s.app.calibrator.status().stale

    response = match(s, 3)
    assert len(response.candidates) >= 1
    # The listing's photo is the product's own image: found by the photo, cosine 1.
    own = [c for c in response.candidates if c.product.sku == "CAL-003"]
    assert own and own[0].similarity == pytest.approx(1.0, abs=1e-5)
    for c in response.candidates:
        assert 0.0 <= c.probability <= 1.0


def test_an_unreadable_new_calibration_keeps_the_one_in_use(served: Served) -> None:
    s = served
    if not s.app.calibrator.path.is_file():
        s.app.calibrator.calibrate(items=10)
    match(s, 5)  # loads the file
    path = s.app.calibrator.path
    good = path.read_bytes()
    try:
        path.write_text("{ not json", encoding="utf-8")
        assert len(match(s, 5).candidates) >= 1  # still answering, with the previous one
        assert s.app.calibrator.status().stale  # and the file is due to be fitted again
    finally:
        path.write_bytes(good)


def test_a_changed_catalog_makes_the_calibration_stale(served: Served) -> None:
    s = served
    s.app.calibrator.calibrate(items=10)
    assert s.app.calibrator.refresh() is None  # current: nothing to do
    picture(500).save(s.folder / "new.png")
    extra = s.folder / "more.jsonl"
    extra.write_text(json.dumps(line(500, "new.png", "block toy new")) + "\n",
                     encoding="utf-8")
    ingest_file(extra, s.app.catalog, roots=[s.folder])
    status = s.app.calibrator.status()
    assert status.stale and "catalog version" in status.reason
    written_before = s.app.calibrator.path.stat().st_mtime_ns
    assert s.app.calibrator.refresh(items=10) is not None
    assert s.app.calibrator.path.stat().st_mtime_ns != written_before
    assert not s.app.calibrator.status().stale


def test_too_few_readable_products_is_a_clear_error(served: Served) -> None:
    with pytest.raises(NotEnoughProducts, match="at least 10"):
        served.app.calibrator.calibrate(items=5)
