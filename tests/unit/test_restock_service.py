"""RestockService over fakes of its ports (dense path, no local features): which SKUs a shelf
photo shows, where, with the stock of the asked warehouse and bin, in restock order, within
the key's scope. The shelf is two coloured boxes drawn in memory; the fake encoder hashes
pixels, so a catalog image "is" the region whose pixels give its vector."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image, ImageDraw

from backend.config import SearchSettings
from backend.domain.photo_search import decode_query_photo
from backend.domain.restock import RestockMatch, RestockService, proposals, select
from backend.domain.types import StockLevel
from backend.errors import InvalidInput, PermissionDenied
from backend.security import Principal, Role, acting_as
from tests.fake_ports import FakeCatalog, MemoryVectorStore, make_product, vector_at
from tests.fakes import FakeEncoder

COLLECTION = "products"
# Small items on a small photo: region proposals stay a few milliseconds.
RED_BOX = (20, 30, 44, 66)
BLUE_BOX = (140, 30, 164, 66)


def shelf_photo() -> bytes:
    image = Image.new("RGB", (192, 96), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle(RED_BOX, fill=(200, 30, 30))
    draw.rectangle(BLUE_BOX, fill=(30, 30, 200))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def inside(inner: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> bool:
    return (outer[0] <= inner[0] and outer[1] <= inner[1]
            and inner[2] <= outer[2] and inner[3] <= outer[3])


class World:
    def __init__(self) -> None:
        self.photo = shelf_photo()
        self.encoder = FakeEncoder(dim=64)
        settings = SearchSettings()
        image = asyncio.run(decode_query_photo(self.photo, settings, draft=False))
        # The regions the service will propose; the first two isolate the two items.
        regions = proposals(image)
        red_region, blue_region = regions[0], regions[1]
        assert inside(RED_BOX, red_region[0]) and inside(BLUE_BOX, blue_region[0])
        self.boxes = {"red": red_region[0], "blue": blue_region[0]}
        vectors = self.encoder.encode_many([red_region[1], blue_region[1]], [None, None])
        self.catalog = FakeCatalog([
            make_product("red", inventory=[StockLevel("w1", "", 2, 5)]),
            make_product("blue", merchant="rival", listed=False, inventory=[
                StockLevel("w1", "A", 10, 2), StockLevel("w1", "B", 1, 0),
                StockLevel("w9", "", 4, 0)]),
            make_product("far", inventory=[StockLevel("w1", "", 0, 0)]),
        ])
        self.vectors = MemoryVectorStore()
        self.vectors.add_product(COLLECTION, self.catalog.products["red"],
                                 [{"image": vectors[0]["image"]}])
        self.vectors.add_product(COLLECTION, self.catalog.products["blue"],
                                 [{"image": vectors[1]["image"]}])
        self.vectors.add_product(COLLECTION, self.catalog.products["far"],
                                 [{"image": vector_at(vectors[0]["image"], 0.2, seed=3)}])
        self.service = RestockService(self.catalog, self.vectors, self.encoder, COLLECTION,
                                      settings, photo=None)

    def find(self, warehouse: str, bin_: str = "", top_k: int = 5,
             photo: bytes | None = None) -> list[RestockMatch]:
        return asyncio.run(self.service.find(self.photo if photo is None else photo,
                                             warehouse, bin_, top_k))


@pytest.fixture(scope="module")
def world() -> World:
    """Built once: the tests only read the catalog and the index."""
    return World()


def summary(matches: list[RestockMatch]) -> list[tuple[str, bool, list[tuple[str, int]]]]:
    return [(m.product.product_id, m.low_stock, [(s.bin, s.quantity) for s in m.stock])
            for m in matches]


def test_a_shelf_photo_finds_each_item_where_it_stands_low_stock_first(world: World) -> None:
    matches = world.find(" W1 ")  # warehouse names compare in canonical form
    assert summary(matches) == [
        ("red", True, [("", 2)]),  # 2 left, reorder at 5: restock first
        ("blue", False, [("A", 10), ("B", 1)]),
    ]
    assert [m.box for m in matches] == [world.boxes["red"], world.boxes["blue"]]
    assert all(m.score == pytest.approx(1.0, abs=1e-5) and m.facings == 1 for m in matches)


def test_a_bin_narrows_the_stock_reported(world: World) -> None:
    matches = world.find("w1", bin_="B")
    assert summary(matches) == [
        ("red", True, []),  # nothing in bin B: it must be restocked there
        ("blue", False, [("B", 1)]),
    ]


def test_a_warehouse_key_restocks_only_its_warehouses_and_what_it_may_see(world: World) -> None:
    with acting_as(Principal(Role.WAREHOUSE, warehouses=("w2",))):
        with pytest.raises(PermissionDenied):
            world.find("w1")
        # The unlisted item of another merchant is not held in w2: not shown.
        assert summary(world.find("w2")) == [("red", True, [])]
    with acting_as(Principal(Role.WAREHOUSE, warehouses=("w9",))):
        assert [m.product.product_id for m in world.find("w9")] == ["red", "blue"]


def test_top_k_and_requests_without_a_photo_or_warehouse(world: World) -> None:
    assert [m.product.product_id for m in world.find("w1", top_k=1)] == ["red"]
    with pytest.raises(InvalidInput, match="photo"):
        world.find("w1", photo=b"")
    with pytest.raises(InvalidInput, match="warehouse"):
        world.find("  ")
    with pytest.raises(InvalidInput, match="top_k"):
        world.find("w1", top_k=21)


def test_select_keeps_one_box_per_product_and_drops_overlaps_and_weak_ones() -> None:
    left, left_again, right = (0, 0, 10, 10), (1, 1, 10, 10), (20, 0, 30, 10)
    chosen = select([(0.9, "a", left), (0.95, "a", right), (0.8, "b", left_again),
                     (0.85, "c", left), (0.3, "d", (40, 0, 50, 10))], top_k=5)
    # a's best box is on the right; c wins the left box over b (overlapping); d is too weak.
    assert chosen == [(0.95, "a", right), (0.85, "c", left)]
    assert select([], 3) == []
