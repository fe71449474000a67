"""API keys, roles and scopes over a real gRPC server on 127.0.0.1 (keys required), and no
secret in logs or error messages."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from backend.config import AuthSettings
from backend.security import ApiKeys, hash_key
from backend.transport.grpc import interceptors
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2_grpc as rpc
from tests.integration.conftest import Running
from tests.integration.side_server import side_server


@dataclass
class Secured:
    channel: grpc.Channel
    search: rpc.ProductSearchStub
    writes: rpc.CatalogStub
    keys: ApiKeys
    admin: str
    alpha: str  # storefront of merchant sec-alpha
    beta: str  # storefront of merchant sec-beta
    warehouse: str  # warehouse sec-wh-1
    products: dict[str, str]  # sku -> product id


def md(key: str) -> list[tuple[str, str]]:
    return [("x-api-key", key)]


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def _product(sku: str, merchant: str, title: str, listed: bool) -> pb.Product:
    return pb.Product(
        sku=sku, merchant=merchant, title=title, category="security/tests", colour="violet",
        price=pb.Money(amount=10, currency="EUR"), listed=listed,
        inventory=[pb.StockLevel(warehouse="sec-wh-1", bin="A", quantity=5)])


@pytest.fixture(scope="module")
def secured(running: Running) -> Iterator[Secured]:
    keys = ApiKeys(running.app.catalog, cache_ttl_s=0)
    admin = keys.create("admin").key
    with side_server(running.app, auth=AuthSettings(enabled=True, cache_ttl_s=0)) as addr:
        channel = grpc.insecure_channel(addr)
        writes = rpc.CatalogStub(channel)
        items = [
            _product("SEC-A-LISTED", "sec-alpha", "quokka lantern alpha listed", True),
            _product("SEC-A-HIDDEN", "sec-alpha", "quokka lantern alpha hidden", False),
            _product("SEC-B-LISTED", "sec-beta", "quokka lantern beta listed", True),
            _product("SEC-B-HIDDEN", "sec-beta", "quokka lantern beta hidden", False),
        ]
        reply = writes.UpsertProducts(iter(items), timeout=30, metadata=md(admin))
        deadline = time.monotonic() + 30
        while running.app.catalog.indexed_version() < reply.catalog_version:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        try:
            yield Secured(
                channel=channel, search=rpc.ProductSearchStub(channel), writes=writes,
                keys=keys, admin=admin,
                alpha=keys.create("storefront", ["sec-alpha"]).key,
                beta=keys.create("storefront", ["sec-beta"]).key,
                warehouse=keys.create("warehouse", warehouses=["sec-wh-1"]).key,
                products={item.sku: pid for item, pid in zip(items, reply.product_ids,
                                                              strict=True)},
            )
        finally:
            channel.close()


def _search(s: Secured, key: str, **kwargs: object) -> pb.SearchResponse:
    response: pb.SearchResponse = s.search.Search(
        pb.SearchRequest(**kwargs), timeout=30, metadata=md(key))
    return response


def _skus(response: pb.SearchResponse) -> set[str]:
    return {h.product.sku for h in response.hits}


QUERY = {"text": "quokka lantern", "top_k": 50,
         "filters": pb.Filters(category="security/tests")}


def test_keys_are_stored_hashed_and_printed_once(running: Running) -> None:
    keys = ApiKeys(running.app.catalog)
    created = keys.create("storefront", ["m1"])
    assert created.key.startswith("psk_") and len(created.key) > 40
    rows = running.app.catalog.list_api_keys()
    row = next(r for r in rows if r.id == created.key_id)
    assert row.key_hash == hash_key(created.key) and created.key not in row.key_hash
    assert keys.authenticate(created.key).merchants == ("m1",)


def test_missing_bad_and_revoked_keys_are_unauthenticated(secured: Secured) -> None:
    call = secured.search.Search
    request = pb.SearchRequest(text="lamp")
    assert status_of(lambda: call(request, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    for bad in ("nonsense", "psk_" + "x" * 43, secured.admin[:-1], "psk_" + "x" * 300):
        assert status_of(lambda bad=bad: call(request, timeout=10, metadata=md(bad))) == \
            grpc.StatusCode.UNAUTHENTICATED
    created = secured.keys.create("storefront", ["sec-alpha"])
    assert call(request, timeout=30, metadata=md(created.key)).hits
    assert secured.keys.revoke(created.key_id)
    assert status_of(lambda: call(request, timeout=10, metadata=md(created.key))) == \
        grpc.StatusCode.UNAUTHENTICATED
    # Writes are refused the same way, and nothing is stored.
    assert status_of(lambda: secured.writes.UpsertProducts(
        iter([_product("SEC-X", "x", "x", True)]), timeout=10)) == \
        grpc.StatusCode.UNAUTHENTICATED


def test_health_and_reflection_stay_open(secured: Secured) -> None:
    reply = health_pb2_grpc.HealthStub(secured.channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    replies = reflection_pb2_grpc.ServerReflectionStub(secured.channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    assert any(r.list_services_response.service for r in replies)


def test_roles_are_enforced(secured: Secured, running: Running) -> None:
    before = running.app.catalog.catalog_version()
    new = [_product("SEC-NEW", "sec-alpha", "not allowed", True)]
    for key in (secured.alpha, secured.warehouse):
        assert status_of(lambda key=key: secured.writes.UpsertProducts(
            iter(new), timeout=10, metadata=md(key))) == grpc.StatusCode.PERMISSION_DENIED
        assert status_of(lambda key=key: secured.writes.DeleteProducts(
            pb.DeleteProductsRequest(product_ids=list(secured.products.values())),
            timeout=10, metadata=md(key))) == grpc.StatusCode.PERMISSION_DENIED
    stock = pb.UpdateInventoryRequest(updates=[pb.InventoryUpdate(
        product_id=secured.products["SEC-A-LISTED"], warehouse="sec-wh-1", bin="A",
        quantity=7)])
    assert status_of(lambda: secured.writes.UpdateInventory(
        stock, timeout=10, metadata=md(secured.alpha))) == grpc.StatusCode.PERMISSION_DENIED
    assert status_of(lambda: _search(secured, secured.warehouse, **QUERY)) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert running.app.catalog.catalog_version() == before

    # A warehouse key changes stock in its own warehouse only, and never prices.
    other = pb.UpdateInventoryRequest(updates=[pb.InventoryUpdate(
        product_id=secured.products["SEC-A-LISTED"], warehouse="sec-wh-2", quantity=1)])
    assert status_of(lambda: secured.writes.UpdateInventory(
        other, timeout=10, metadata=md(secured.warehouse))) == \
        grpc.StatusCode.PERMISSION_DENIED
    price = pb.UpdateInventoryRequest(updates=[pb.InventoryUpdate(
        product_id=secured.products["SEC-A-LISTED"], price=pb.Money(amount=1))])
    assert status_of(lambda: secured.writes.UpdateInventory(
        price, timeout=10, metadata=md(secured.warehouse))) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert running.app.catalog.catalog_version() == before
    reply = secured.writes.UpdateInventory(stock, timeout=10, metadata=md(secured.warehouse))
    assert reply.updated == 1
    # The admin key may do everything, including search.
    assert _search(secured, secured.admin, **QUERY).hits


def test_storefront_sees_listed_products_and_only_its_own_unlisted(secured: Secured) -> None:
    everything = {"SEC-A-LISTED", "SEC-A-HIDDEN", "SEC-B-LISTED", "SEC-B-HIDDEN"}
    assert _skus(_search(secured, secured.admin, **QUERY)) == everything
    assert _skus(_search(secured, secured.alpha, **QUERY)) == everything - {"SEC-B-HIDDEN"}
    assert _skus(_search(secured, secured.beta, **QUERY)) == everything - {"SEC-A-HIDDEN"}
    # Asking for the other merchant explicitly does not widen the scope.
    only_beta = _search(secured, secured.alpha, **{**QUERY, "filters": pb.Filters(
        category="security/tests", merchants=["sec-beta"])})
    assert _skus(only_beta) == {"SEC-B-LISTED"}


def test_storefront_scope_holds_for_similar_items_and_lookup(secured: Secured) -> None:
    hidden_b = secured.products["SEC-B-HIDDEN"]
    # "More like this" from another merchant's unlisted product: it does not exist for alpha.
    assert status_of(lambda: _search(secured, secured.alpha, product_id=hidden_b)) == \
        grpc.StatusCode.NOT_FOUND
    similar = _search(secured, secured.alpha, product_id=secured.products["SEC-A-LISTED"],
                      top_k=50, filters=pb.Filters(category="security/tests"))
    assert "SEC-B-HIDDEN" not in _skus(similar) and "SEC-A-HIDDEN" in _skus(similar)
    assert _search(secured, secured.beta, product_id=hidden_b, top_k=5).hits

    def get(key: str, **kwargs: str) -> pb.Product:
        product: pb.Product = secured.search.GetProduct(
            pb.GetProductRequest(**kwargs), timeout=10, metadata=md(key))
        return product

    assert status_of(lambda: get(secured.alpha, product_id=hidden_b)) == \
        grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: get(secured.alpha, sku="SEC-B-HIDDEN", merchant="sec-beta")) == \
        grpc.StatusCode.NOT_FOUND
    assert get(secured.beta, product_id=hidden_b).sku == "SEC-B-HIDDEN"
    assert get(secured.alpha, product_id=secured.products["SEC-B-LISTED"]).listed


# ------------------------------------------------------------------------- secrets in logs


def test_no_key_in_logs_or_messages(secured: Secured, caplog: pytest.LogCaptureFixture
                                    ) -> None:
    caplog.set_level(logging.DEBUG)
    presented = ["psk_" + "S" * 43, secured.admin + "x", "not-even-a-key-but-secret-1234"]
    details = []
    for key in presented:
        with pytest.raises(grpc.RpcError) as info:
            secured.search.Search(pb.SearchRequest(text="lamp"), timeout=10, metadata=md(key))
        details.append(info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        secured.writes.UpsertProducts(iter([_product("SEC-Y", "y", "y", True)]), timeout=10,
                                      metadata=md(secured.alpha))
    details.append(info.value.details() or "")
    _search(secured, secured.admin, **QUERY)
    text = caplog.text + "\n".join(details)
    assert "UNAUTHENTICATED" in caplog.text and "PERMISSION_DENIED" in caplog.text
    for key in [*presented, secured.admin, secured.alpha]:
        assert key not in text
        assert key[4:20] not in text


def test_no_db_password_in_logs_or_errors(caplog: pytest.LogCaptureFixture,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from backend.app import build_app
    from backend.config import load_settings

    interceptors.install_log_hygiene()
    password = "Pw-n0t-to-be-seen-42"
    url = f"postgresql+psycopg://nobody:{password}@127.0.0.1:5432/no_such_db_here"
    caplog.set_level(logging.DEBUG)
    settings = load_settings(database_url=url)
    assert password not in repr(settings) and password not in str(settings)
    interceptors.register_secret(password)
    with pytest.raises(Exception) as info:
        build_app(settings)
    logging.getLogger("prodsearch.test").exception("database failed: %s (url %s)",
                                                   info.value, url)
    try:
        raise RuntimeError(f"wrapped: {url}")
    except RuntimeError:
        logging.getLogger("prodsearch.test").exception("unexpected")
    assert "database failed" in caplog.text and "unexpected" in caplog.text
    assert password not in caplog.text
    assert password not in str(info.value)
    out = capsys.readouterr()
    assert password not in out.out + out.err


def test_internal_errors_are_generic_and_redacted(
        secured: Secured, running: Running, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    password = "An0ther-Secret-Pw"
    interceptors.register_secret(password)

    async def broken(query: object) -> object:
        raise RuntimeError(f"lost connection to postgresql://app:{password}@db/prod "
                           f"while serving {secured.admin}")

    monkeypatch.setattr(running.app.search, "search", broken)
    caplog.set_level(logging.INFO)
    with pytest.raises(grpc.RpcError) as info:
        _search(secured, secured.admin, text="lamp")
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert password not in (info.value.details() or "")
    assert "lost connection" in caplog.text  # the traceback is logged, redacted
    assert password not in caplog.text and secured.admin not in caplog.text
