"""Photo search and restock on local features, through the real gRPC server on 127.0.0.1:
a catalog item photographed among clutter that is not in the catalog is found first and
boxed where it is; a shelf of three catalog items restocks exactly those three SKUs; lost or
stray feature files are found and repaired by reconcile."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from backend.demo_catalog import OPENCLIPART_DIR, pick_images
from backend.domain.reconcile import Reconciler
from backend.stores.features import StoredFeatures
from backend.stores.vectors.base import point_id
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from encoders.evaluation.photos import EASY, SHELF, photo_jpeg, render_photo, render_shelf
from tests.integration.conftest import Running

Box = tuple[int, int, int, int]


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def box_of(box: pb.Box) -> Box:
    return (round(box.x0), round(box.y0), round(box.x1), round(box.y1))


def image_of(entry: dict[str, object]) -> Image.Image:
    return Image.open(str(entry["images"][0]))  # type: ignore[index]


@pytest.fixture(scope="module")
def clutter(running: Running) -> list[Image.Image]:
    """Images that are not in the catalog, to clutter the shelf around the item."""
    in_catalog = {str(e["images"][0]) for e in running.catalog}  # type: ignore[index]
    others = [p for p in pick_images(OPENCLIPART_DIR, 300, seed=99) if str(p) not in in_catalog]
    return [Image.open(p) for p in others[:40]]


def test_cluttered_photo_finds_the_item_first_with_its_box(
        running: Running, clutter: list[Image.Image]) -> None:
    """The photographed item first (small, among non-catalog clutter: the SHELF rendering);
    a first hit with a box was verified geometrically: it must be the item, boxed where it
    is. Ranking does not demand verification: a well-voted item ranks first unboxed."""
    rng = random.Random(17)
    items = running.catalog[3::10]
    first = boxed = 0
    for entry in items:
        photo, true_box = render_photo(image_of(entry), rng, SHELF, clutter)
        response = running.search.Search(
            pb.SearchRequest(image=photo_jpeg(photo), top_k=5), timeout=60)
        top = response.hits[0]
        scores = [h.score for h in response.hits]
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 <= s <= 1.0 for s in scores)
        first += top.product.sku == entry["sku"]
        if top.HasField("box"):
            assert top.product.sku == entry["sku"], "a verified first hit is the item"
            # The true box is the pasted layer's bounds, margins of the rotated image
            # included; the found one is the catalog image's outline projected.
            assert iou(box_of(top.box), true_box) >= 0.3, (box_of(top.box), true_box)
            assert top.score_parts["inliers"] > 0 and top.score_parts["votes"] > 0
            boxed += 1
        # A box always comes from a verification.
        assert not any(h.HasField("box") for h in response.hits
                       if h.score_parts.get("inliers", 0) == 0)
    # Measured with the descriptor vote: 3 of these 8 first, 2
    # of them boxed (the goal is all; the shelf evaluation has the larger-scale figures).
    assert first >= 3 and boxed >= 2, f"{first}/{len(items)} first, {boxed} boxed"


def test_photo_with_text_keeps_the_item_first(running: Running,
                                              clutter: list[Image.Image]) -> None:
    entry = running.catalog[21]
    photo, _ = render_photo(image_of(entry), random.Random(3), SHELF, clutter)
    response = running.search.Search(pb.SearchRequest(
        image=photo_jpeg(photo), text=str(entry["title"]), top_k=5), timeout=60)
    assert response.hits[0].product.sku == entry["sku"]


def textured(running: Running, minimum: int = 150) -> list[dict[str, object]]:
    """Catalog items whose image has enough keypoints to be verified on a shelf photo (flat
    clip art with a few dozen cannot be; README, "Photo search")."""
    app = running.app
    assert app.photo is not None
    collection = app.vectors.resolve(app.settings.collection)
    by_sku = {p.sku: p for page in app.catalog.iter_products() for p in page}
    out = []
    for entry in running.catalog:
        product = by_sku[str(entry["sku"])]
        features = app.photo.load(collection, product.product_id,
                                  point_id(product.product_id, 0, app.encoder.model_version))
        if features is not None and len(features) >= minimum:
            out.append(entry)
    return out


def test_restock_of_a_three_item_shelf_gives_exactly_those_skus(running: Running) -> None:
    """Nothing that is not on the shelf, ever; most of the items that are (measured: 7 of
    these 9 with the first shipped scorer, 6 with the one fitted at catalog scale, whose
    verified threshold 0.678 leaves out true matches of 10-14 inliers; the goal is all)."""
    rng = random.Random(8)
    candidates = textured(running)
    assert len(candidates) >= 20
    found = complete = 0
    for _ in range(3):
        entries = rng.sample(candidates, 3)
        photo, boxes = render_shelf([image_of(e) for e in entries], rng, style=EASY)
        response = running.search.FindRestockMatches(
            pb.RestockRequest(image=photo_jpeg(photo), warehouse="berlin", top_k=8),
            timeout=120)
        wanted = {str(e["sku"]): box for e, box in zip(entries, boxes, strict=True)}
        skus = {m.product.sku for m in response.matches}
        assert skus <= set(wanted), "a reported SKU is on the shelf"
        found += len(skus)
        complete += skus == set(wanted)
        for m in response.matches:
            assert iou(box_of(m.box), wanted[m.product.sku]) >= 0.3
            assert m.facings == 1
            assert all(s.warehouse == "berlin" for s in m.stock)
    assert found >= 6 and complete >= 1, (found, complete)


def test_restock_reports_no_sku_that_is_not_on_a_hard_shelf(running: Running) -> None:
    """Harder shelf photos (perspective, coloured light, blur, low JPEG quality): what is
    reported is verified, so it is on the shelf, even when not everything is found."""
    rng = random.Random(8)
    found = 0
    for _ in range(3):
        entries = rng.sample(running.catalog, 3)
        photo, _ = render_shelf([image_of(e) for e in entries], rng, style=SHELF)
        response = running.search.FindRestockMatches(
            pb.RestockRequest(image=photo_jpeg(photo), warehouse="berlin", top_k=8),
            timeout=120)
        skus = {m.product.sku for m in response.matches}
        assert skus <= {str(e["sku"]) for e in entries}
        found += len(skus)
    # Measured: 3 of 9 with the first scorer, 1 with the catalog-scale one (its threshold).
    assert found >= 1, f"{found}/9 items found"


def test_restock_counts_facings(running: Running) -> None:
    twice, once = running.catalog[30], running.catalog[44]
    photo, _ = render_shelf([image_of(twice), image_of(once), image_of(twice)],
                            random.Random(2), style=SHELF)
    response = running.search.FindRestockMatches(
        pb.RestockRequest(image=photo_jpeg(photo), warehouse="berlin", top_k=8), timeout=120)
    facings = {m.product.sku: m.facings for m in response.matches}
    assert facings[twice["sku"]] == 2
    # The single item is found with the first scorer; the catalog-scale one's threshold
    # leaves it out on this photo. Nothing else is ever reported.
    assert set(facings) <= {twice["sku"], once["sku"]}
    double = next(m for m in response.matches if m.product.sku == twice["sku"])
    assert len(double.facing_boxes) == 2


def test_reconcile_finds_and_repairs_lost_and_stray_features(running: Running) -> None:
    app = running.app
    assert app.photo is not None
    collection = app.vectors.resolve(app.settings.collection)
    product = next(p for p in next(iter(app.catalog.iter_products()))
                   if len(app.photo.load(collection, p.product_id, point_id(
                       p.product_id, 0, app.encoder.model_version)) or ()) > 0)
    pid = point_id(product.product_id, 0, app.encoder.model_version)
    original = app.photo.store.get(collection, product.product_id, pid)
    assert original is not None
    app.photo.store.delete(collection, [(product.product_id, pid)])  # lost
    stray = StoredFeatures(point_id("gone-product", 0, "x"), "gone-product", 0,
                           app.photo.version, b"")
    app.photo.store.put_many(collection, [stray])  # left behind by a crash
    reconciler = Reconciler(app.catalog, app.vectors, app.settings.collection,
                            app.encoder.model_version, app.photo)
    report = reconciler.check()
    assert report.features_missing == [product.product_id]
    assert [f.point_id for f in report.feature_orphans] == [stray.point_id]
    after = reconciler.fix(report, app.indexer.index_products)
    assert after.differences == 0, after.summary()
    assert app.photo.store.get(collection, product.product_id, pid) == original
    assert app.photo.store.get(collection, "gone-product", stray.point_id) is None


def test_feature_files_hold_the_catalog(running: Running) -> None:
    """Index size per product stays small (sidecar files; the README reports it)."""
    app = running.app
    assert app.photo is not None
    collection = app.vectors.resolve(app.settings.collection)
    size = app.photo.store.size_bytes(collection)
    per_product = size / len(running.catalog)
    assert 0 < per_product < 200_000, per_product
    assert Path(app.photo.store.root).is_relative_to(running.data_dir)
