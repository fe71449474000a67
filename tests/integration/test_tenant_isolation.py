"""Tenant identity has one canonical form (trimmed, case-folded), and every read path honours
it: GetProduct (by id and by SKU), Search, more-like-this, MatchProduct and
FindRestockMatches, over a real gRPC server with keys required, on SQLite and PostgreSQL.

The encoder is a small stand-in whose image vector is the photo's mean colour, so that a red
photo matches every red product with score 1: which products come back is then decided by
the scope alone, which is what these tests are about.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import grpc
import numpy as np
import pytest
from PIL import Image

from backend.app import App, build_app
from backend.config import load_settings
from backend.domain.match_model import FEATURES, MatchCalibration
from backend.security import ApiKeys
from backend.stores.catalog import migrate
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2_grpc as rpc
from backend.transport.grpc.server import BackgroundServer

DIM = 8
VERSION = "colour-test-1"


class ColourEncoder:
    """Image vector: the mean RGB colour (so any crop of a plain photo matches it exactly);
    text vector: a hash of the text."""

    model_version = VERSION
    dims: ClassVar[dict[str, int]] = {"image": DIM, "text": DIM}

    def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def encode(self, image: Image.Image | None, text: str | None
                     ) -> dict[str, np.ndarray]:
        return self.encode_many([image], [text])[0]

    def encode_many(self, images: Sequence[Image.Image | None], texts: Sequence[str | None]
                    ) -> list[dict[str, np.ndarray]]:
        out = []
        for image, text in zip(images, texts, strict=True):
            vectors: dict[str, np.ndarray] = {}
            if image is not None:
                mean = np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=(0, 1))
                v = np.zeros(DIM, dtype=np.float32)
                v[:3] = mean + 1.0
                vectors["image"] = v / np.linalg.norm(v)
            if text is not None:
                seed = abs(hash(text)) % (2**32)
                t = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
                vectors["text"] = t / np.linalg.norm(t)
            out.append(vectors)
        return out


RED, GREEN, BLUE, YELLOW = (220, 20, 20), (20, 220, 20), (20, 20, 220), (220, 220, 20)


def png(colour: tuple[int, int, int], size: tuple[int, int] = (96, 96)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Tenants:
    app: App
    search: rpc.ProductSearchStub
    writes: rpc.CatalogStub
    ids: dict[str, str]  # sku -> product id
    admin: str
    b_shop: str  # storefront key created for "MERCHANT-B  " (another spelling of merchant-b)
    c_shop: str  # storefront key of merchant-c
    w1: str  # warehouse key of " W1"
    suffix: str


def md(key: str) -> list[tuple[str, str]]:
    return [("x-api-key", key)]


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
                scope="module")
def tenants(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Tenants]:
    data_dir = tmp_path_factory.mktemp("tenants")
    overrides: dict[str, object] = {}
    if request.param == "postgres":
        overrides["database_url"] = url = request.getfixturevalue("postgres_url")
        migrate.upgrade(url)  # no-op at head; the session database is shared
    # Recognition here is the colour encoder's (plain colour images have no local
    # features); these tests are about who sees what, which both photo paths share.
    settings = load_settings(data_dir=data_dir, grpc_port=0, indexer_poll_ms=50,
                             auth={"enabled": True, "cache_ttl_s": 0},
                             search={"local_features": False}, **overrides)
    app = build_app(settings, encoder=ColourEncoder())  # type: ignore[arg-type]
    weights = np.zeros((len(FEATURES) + 1, 3))
    app.match.set_calibration(MatchCalibration(VERSION, weights, np.zeros(len(FEATURES)),
                                               np.ones(len(FEATURES))))
    server = BackgroundServer(app)
    addr = server.start()
    channel = grpc.insecure_channel(addr)
    # The PostgreSQL database is shared by the session: names of this run are unique.
    suffix = uuid.uuid4().hex[:8]
    keys = ApiKeys(app.catalog, cache_ttl_s=0)
    admin = keys.create("admin").key
    def product(sku: str, merchant: str, listed: bool, warehouses: Sequence[str],
                colour: tuple[int, int, int]) -> pb.Product:
        return pb.Product(
            sku=f"{sku}-{suffix}", merchant=f"{merchant}-{suffix}", title=f"scarlet teapot {sku}",
            category=f"tenants/{suffix}", price=pb.Money(amount=5, currency="EUR"),
            listed=listed, images=[pb.ProductImage(content=png(colour))],
            inventory=[pb.StockLevel(warehouse=w, bin="A", quantity=3) for w in warehouses])

    items = [
        # Written with other spellings of the same tenants: they are merchant-b / w1 / w2.
        product("B-HIDDEN", "Merchant-B", False, ["W1", "W2"], BLUE),
        product("B-LISTED", " merchant-b", True, ["W2"], YELLOW),
        product("C-HIDDEN", "MERCHANT-C", False, ["W2"], RED),
        product("C-HIDDEN-W1", "Merchant-C", False, ["w1 "], GREEN),
        product("C-LISTED", "merchant-c", True, ["W2"], YELLOW),
    ]
    writes = rpc.CatalogStub(channel)
    try:
        reply = writes.UpsertProducts(iter(items), timeout=30, metadata=md(admin))
        deadline = time.monotonic() + 60
        while app.catalog.indexed_version() < reply.catalog_version:
            assert time.monotonic() < deadline, "indexer did not catch up"
            time.sleep(0.05)
        yield Tenants(
            app=app, search=rpc.ProductSearchStub(channel), writes=writes,
            ids={i.sku.rsplit("-", 1)[0]: pid
                 for i, pid in zip(items, reply.product_ids, strict=True)},
            admin=admin,
            b_shop=keys.create("storefront", [f"MERCHANT-B-{suffix}  "]).key,
            c_shop=keys.create("storefront", [f"merchant-c-{suffix}"]).key,
            w1=keys.create("warehouse", warehouses=[" W1"]).key,
            suffix=suffix,
        )
    finally:
        channel.close()
        server.stop()
        app.close()


def _query(t: Tenants, **kwargs: object) -> pb.SearchRequest:
    return pb.SearchRequest(top_k=50, filters=pb.Filters(category=f"tenants/{t.suffix}"),
                            **kwargs)  # type: ignore[arg-type]


def _skus(t: Tenants, products: Sequence[pb.Product]) -> set[str]:
    return {p.sku.removesuffix(f"-{t.suffix}") for p in products}


def test_one_tenant_whatever_the_spelling(tenants: Tenants) -> None:
    t = tenants
    # Five writes, two tenants: every spelling landed on the canonical name.
    merchants = {t.app.catalog.get_product(pid).merchant for pid in t.ids.values()}
    assert merchants == {f"merchant-b-{t.suffix}", f"merchant-c-{t.suffix}"}
    # The same SKU written under another spelling is the same product, not a second one.
    again = t.writes.UpsertProducts(iter([pb.Product(
        sku=f"C-LISTED-{t.suffix}", merchant=f"  MERCHANT-c-{t.suffix}",
        title="scarlet teapot C-LISTED", category=f"tenants/{t.suffix}",
        price=pb.Money(amount=5, currency="EUR"), images=[pb.ProductImage(content=png(YELLOW))],
        inventory=[pb.StockLevel(warehouse="w2", bin="A", quantity=3)])]),
        timeout=30, metadata=md(t.admin))
    assert list(again.product_ids) == [t.ids["C-LISTED"]]
    assert again.upserted == 0  # identical content under another spelling: unchanged
    found = t.search.GetProduct(pb.GetProductRequest(
        sku=f"B-HIDDEN-{t.suffix}", merchant=f"Merchant-B-{t.suffix}"), timeout=10,
        metadata=md(t.b_shop))
    assert found.product_id == t.ids["B-HIDDEN"]
    assert found.merchant == f"merchant-b-{t.suffix}"


def test_get_product_is_scoped(tenants: Tenants) -> None:
    t = tenants

    def get(key: str, **kwargs: str) -> pb.Product:
        product: pb.Product = t.search.GetProduct(pb.GetProductRequest(**kwargs), timeout=10,
                                                  metadata=md(key))
        return product

    assert get(t.b_shop, product_id=t.ids["B-HIDDEN"]).sku.startswith("B-HIDDEN")
    for spelling in ("merchant-c", "MERCHANT-C", " Merchant-C "):
        assert status_of(lambda s=spelling: get(
            t.b_shop, sku=f"C-HIDDEN-{t.suffix}", merchant=f"{s.strip()}-{t.suffix}")) == \
            grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: get(t.b_shop, product_id=t.ids["C-HIDDEN"])) == \
        grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: get(t.c_shop, product_id=t.ids["B-HIDDEN"])) == \
        grpc.StatusCode.NOT_FOUND
    assert get(t.c_shop, product_id=t.ids["C-HIDDEN"]).sku.startswith("C-HIDDEN")


def test_search_and_more_like_this_are_scoped(tenants: Tenants) -> None:
    t = tenants
    everything = {"B-HIDDEN", "B-LISTED", "C-HIDDEN", "C-HIDDEN-W1", "C-LISTED"}
    for request in (_query(t, text="scarlet teapot"), _query(t, image=png(RED, (64, 80)))):
        admin = t.search.Search(request, timeout=30, metadata=md(t.admin))
        assert _skus(t, [h.product for h in admin.hits]) == everything
        b = t.search.Search(request, timeout=30, metadata=md(t.b_shop))
        assert _skus(t, [h.product for h in b.hits]) == {"B-HIDDEN", "B-LISTED", "C-LISTED"}
        c = t.search.Search(request, timeout=30, metadata=md(t.c_shop))
        assert _skus(t, [h.product for h in c.hits]) == everything - {"B-HIDDEN"}
    # Asking for the other tenant by another spelling does not widen the scope.
    only_c = t.search.Search(pb.SearchRequest(
        text="scarlet teapot", top_k=50, filters=pb.Filters(
            category=f"tenants/{t.suffix}", merchants=[f"MERCHANT-C-{t.suffix}"])),
        timeout=30, metadata=md(t.b_shop))
    assert _skus(t, [h.product for h in only_c.hits]) == {"C-LISTED"}
    # More like this: from the other tenant's unlisted product it does not exist; from one's
    # own, the other tenant's unlisted ones never come back.
    assert status_of(lambda: t.search.Search(pb.SearchRequest(
        product_id=t.ids["C-HIDDEN"]), timeout=30, metadata=md(t.b_shop))) == \
        grpc.StatusCode.NOT_FOUND
    similar = t.search.Search(_query(t, product_id=t.ids["B-LISTED"]), timeout=30,
                              metadata=md(t.b_shop))
    assert _skus(t, [h.product for h in similar.hits]) == {"B-HIDDEN", "C-LISTED"}


def test_match_is_scoped(tenants: Tenants) -> None:
    t = tenants
    listing = pb.MatchRequest(listing=pb.Product(
        title="scarlet teapot", images=[pb.ProductImage(content=png(RED))]), top_k=20)
    admin = t.search.MatchProduct(listing, timeout=30, metadata=md(t.admin))
    assert "C-HIDDEN" in _skus(t, [c.product for c in admin.candidates])
    b = t.search.MatchProduct(listing, timeout=30, metadata=md(t.b_shop))
    seen = _skus(t, [c.product for c in b.candidates])
    assert b.candidates and not seen & {"C-HIDDEN", "C-HIDDEN-W1"}


def test_restock_and_inventory_are_scoped_to_the_warehouse(tenants: Tenants) -> None:
    t = tenants

    def restock(key: str, colour: tuple[int, int, int], warehouse: str = "w1 "
                ) -> list[pb.RestockMatch]:
        reply = t.search.FindRestockMatches(pb.RestockRequest(
            image=png(colour, (320, 240)), warehouse=warehouse, top_k=20), timeout=60,
            metadata=md(key))
        return list(reply.matches)

    # The red shelf item is another tenant's unlisted product stocked elsewhere: the admin
    # finds it, the W1 key does not.
    assert "C-HIDDEN" in _skus(t, [m.product for m in restock(t.admin, RED)])
    assert "C-HIDDEN" not in _skus(t, [m.product for m in restock(t.w1, RED)])
    # Unlisted products it holds stock of are visible to it, with its own stock only.
    for colour, sku in ((GREEN, "C-HIDDEN-W1"), (BLUE, "B-HIDDEN")):
        matches = restock(t.w1, colour)
        assert sku in _skus(t, [m.product for m in matches])
        for match in matches:
            assert {s.warehouse for s in match.product.inventory} <= {"w1"}
            assert {s.warehouse for s in match.stock} <= {"w1"}
    assert status_of(lambda: restock(t.w1, BLUE, warehouse="W2")) == \
        grpc.StatusCode.PERMISSION_DENIED
    # Lookup: its own stock only, and no other unlisted product.
    product = t.search.GetProduct(pb.GetProductRequest(product_id=t.ids["B-HIDDEN"]),
                                  timeout=10, metadata=md(t.w1))
    assert [s.warehouse for s in product.inventory] == ["w1"]
    assert status_of(lambda: t.search.GetProduct(pb.GetProductRequest(
        product_id=t.ids["C-HIDDEN"]), timeout=10, metadata=md(t.w1))) == \
        grpc.StatusCode.NOT_FOUND
    admin = t.search.GetProduct(pb.GetProductRequest(product_id=t.ids["B-HIDDEN"]),
                                timeout=10, metadata=md(t.admin))
    assert sorted(s.warehouse for s in admin.inventory) == ["w1", "w2"]


def test_only_admins_see_server_image_paths(tenants: Tenants) -> None:
    t = tenants
    pid = t.ids["B-LISTED"]
    admin = t.search.GetProduct(pb.GetProductRequest(product_id=pid), timeout=10,
                                metadata=md(t.admin))
    assert Path(admin.images[0].uri).is_file()  # the stored path, for round trips
    for key in (t.b_shop, t.c_shop, t.w1):
        shown = t.search.GetProduct(pb.GetProductRequest(product_id=pid), timeout=10,
                                    metadata=md(key))
        uris = [i.uri for i in shown.images]
        assert uris == [f"image:{pid}/0"]  # stable, opaque: no server path
    hits = t.search.Search(_query(t, text="scarlet teapot"), timeout=30,
                           metadata=md(t.c_shop)).hits
    assert hits and all(i.uri.startswith("image:") for h in hits for i in h.product.images)
