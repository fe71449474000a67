"""Photo search's vote path against a real embedded vector store: the photographed product
comes first with its box, a filter excludes voted products exactly as it excludes store
candidates, a voted point that is gone from the store is never returned, and restock
reports the shelf's products. Synthetic textured images, no data sets."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("faiss", reason="faiss-cpu is a dependency")

from backend.domain.photo_index import PhotoIndex
from backend.domain.photo_search import describe_query, search_photo
from backend.domain.photo_verify import verify_shelf
from backend.domain.types import Filters
from backend.stores.features import FeatureStore
from backend.stores.vectors import EdgeVectorStore
from backend.stores.vectors.base import (
    CollectionSpec,
    PointPayload,
    VectorPoint,
    category_prefixes,
    point_id,
)
from encoders.local_features import LocalFeatureExtractor, PhotoScorer, VisualVocabulary
from tests.unit.test_descriptor_index import _empty, _photo_of, _textured

pytestmark = pytest.mark.slow  # a few minutes of SIFT extraction on a busy 2-core box

DIM = 8
N = 8


def _payload(i: int) -> PointPayload:
    return PointPayload(product_id=f"p{i}", position=0, model_version="m", catalog_version=1,
                        merchant="even" if i % 2 == 0 else "odd",
                        category=category_prefixes("toys"), size="M", material="wood",
                        colour="red", brand="b", price=10.0 + i, in_stock=True, listed=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("vote")
    store = EdgeVectorStore(root / "vectors")
    store.ensure_collection(CollectionSpec("c", {"image": DIM}, sparse_vectors=["words"]))
    scorer = PhotoScorer(np.array([0.8, 2.0, 1.0, 1.0, 0.0]), -5.0, threshold=0.5,
                         restock_min_inliers=12)
    photo = PhotoIndex(FeatureStore(root / "features"), LocalFeatureExtractor(),
                       VisualVocabulary.load(), scorer, workers=1, descriptor_index=_empty)
    images = [_textured(40 + i) for i in range(N)]
    described = photo.describe(images)
    rng = np.random.default_rng(0)
    points = []
    for i in range(N):
        v = rng.standard_normal(DIM).astype(np.float32)
        points.append(VectorPoint(point_id(f"p{i}", 0, "m"), {"image": v / np.linalg.norm(v)},
                                  _payload(i)))
    photo.write("c", [(p.id, p.payload.product_id, 0, d)
                      for p, d in zip(points, described, strict=True) if d is not None])
    store.upsert("c", points)
    yield store, photo, images
    photo.close()
    store.close()


def _search(world, image: Image.Image, filters: Filters):
    store, photo, _ = world
    query = describe_query(photo, image)
    view = np.ones(DIM, np.float32) / np.sqrt(DIM)
    return asyncio.run(search_photo(photo, store, "c", query, [view], None, filters, 10, 20))


def test_the_photographed_product_comes_first_with_its_box(world) -> None:
    _, _, images = world
    ranked = _search(world, _photo_of(images[5], 1), Filters())
    top = ranked[0]
    assert top.product_id == "p5" and top.box is not None
    assert top.votes > 3 * max(c.votes for c in ranked[1:])
    assert top.parts["inliers"] >= 15 and top.parts["votes"] == top.votes
    assert [c.probability for c in ranked] == sorted((c.probability for c in ranked),
                                                     reverse=True)


def test_a_filter_excludes_voted_products(world) -> None:
    _, _, images = world
    ranked = _search(world, _photo_of(images[5], 1), Filters(merchants=["even"]))
    assert ranked and all(c.point.payload.merchant == "even" for c in ranked)
    assert "p5" not in {c.product_id for c in ranked}
    excluded = _search(world, _photo_of(images[4], 1), Filters(exclude_product_ids=["p4"]))
    assert "p4" not in {c.product_id for c in excluded}


def test_a_voted_point_gone_from_the_store_is_not_returned(world) -> None:
    store, photo, images = world
    store.delete_products("c", ["p6"])  # the points first, as the indexer deletes
    try:
        assert photo.descriptors("c").keys_of("p6")  # its descriptors still vote
        assert "p6" not in {c.product_id for c in _search(world, _photo_of(images[6], 2),
                                                           Filters())}
    finally:
        photo.delete_products("c", ["p6"])
    assert not photo.descriptors("c").keys_of("p6")


def test_restock_reports_the_products_on_the_shelf_with_boxes(world) -> None:
    store, photo, images = world
    shelf = Image.new("RGB", (1100, 420), (110, 110, 110))
    for n, i in enumerate((1, 3, 7)):
        shelf.paste(images[i].resize((300, 300)), (40 + n * 360, 60))
    query = describe_query(photo, shelf)
    items = verify_shelf(photo, store, "c", query, Filters(), 8)
    assert {it.product_id for it in items} == {"p1", "p3", "p7"}
    for it in items:
        n = (1, 3, 7).index(int(it.product_id[1:]))
        x0, y0, x1, y1 = it.box
        assert abs(x0 - (40 + n * 360)) < 30 and abs(x1 - (340 + n * 360)) < 30
        assert abs(y0 - 60) < 30 and abs(y1 - 360) < 30
    only_odd = verify_shelf(photo, store, "c", query, Filters(merchants=["odd"]), 8)
    assert {it.product_id for it in only_odd} == {"p1", "p3", "p7"}
    only_even = verify_shelf(photo, store, "c", query, Filters(merchants=["even"]), 8)
    assert only_even == []
