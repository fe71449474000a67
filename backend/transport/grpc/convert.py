"""proto <-> domain conversion. No logic beyond mapping and field-level validation."""

from __future__ import annotations

from backend.domain import types as d
from backend.domain.match import Listing
from backend.domain.ports import InventoryChange
from backend.domain.search import SearchQuery
from backend.errors import InvalidInput, shown
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb

_WHERE_TO_LIST = {
    "size": "sizes",
    "material": "materials",
    "colour": "colours",
    "color": "colours",
    "brand": "brands",
    "merchant": "merchants",
}


def filters_from_pb(msg: pb.Filters) -> d.Filters:
    filters = d.Filters(
        category=msg.category,
        sizes=list(msg.sizes),
        materials=list(msg.materials),
        colours=list(msg.colours),
        brands=list(msg.brands),
        merchants=list(msg.merchants),
        price=d.PriceRange(
            min=msg.price.min if msg.price.HasField("min") else None,
            max=msg.price.max if msg.price.HasField("max") else None,
        ),
        in_stock_only=msg.in_stock_only,
    )
    for key, value in msg.where.items():
        target = _WHERE_TO_LIST.get(key.strip().lower())
        if target is None:
            known = ", ".join(sorted(set(_WHERE_TO_LIST) - {"color"}))
            raise InvalidInput(f"unknown filter field {shown(key)}; filterable fields: {known}")
        getattr(filters, target).append(value)
    return filters


def search_query_from_pb(msg: pb.SearchRequest) -> SearchQuery:
    return SearchQuery(
        image=msg.image,
        text=msg.text,
        product_id=msg.product_id,
        filters=filters_from_pb(msg.filters),
        top_k=msg.top_k,
        page_token=msg.page_token,
        diversify=msg.diversify,
        min_catalog_version=msg.min_catalog_version,
        explain=msg.explain,
        facets=list(dict.fromkeys(msg.facets)),
    )


def facets_to_pb(facets: dict[str, list[tuple[str, int]]]) -> list[pb.Facet]:
    return [pb.Facet(key=key, values=[pb.FacetValue(value=v, count=n) for v, n in values])
            for key, values in facets.items()]


def product_to_pb(product: d.Product) -> pb.Product:
    return pb.Product(
        product_id=product.product_id,
        sku=product.sku,
        merchant=product.merchant,
        title=product.title,
        description=product.description,
        category=product.category,
        brand=product.brand,
        size=product.size,
        material=product.material,
        colour=product.colour,
        price=pb.Money(amount=product.price, currency=product.currency),
        images=[pb.ProductImage(uri=i.uri, position=i.position) for i in product.images],
        inventory=[stock_to_pb(s) for s in product.inventory],
        attributes=product.attributes,
        listed=product.listed,
        catalog_version=product.catalog_version,
    )


def stock_to_pb(level: d.StockLevel) -> pb.StockLevel:
    return pb.StockLevel(
        warehouse=level.warehouse,
        bin=level.bin,
        quantity=level.quantity,
        reorder_point=level.reorder_point,
    )


def product_input_from_pb(msg: pb.Product) -> d.ProductInput:
    for level in msg.inventory:
        if level.quantity < 0 or level.reorder_point < 0:
            raise InvalidInput(f"product {shown(msg.sku)}: negative inventory quantity")
    for n, image in enumerate(msg.images):
        # One entry is one image: a path or uploaded bytes, never both, never neither.
        if bool(image.uri) == bool(image.content):
            raise InvalidInput(f"product {shown(msg.sku)} image {n}: give exactly one of uri "
                               "and content")
    return d.ProductInput(
        sku=msg.sku.strip(),
        merchant=msg.merchant.strip(),
        title=msg.title.strip(),
        description=msg.description,
        category=msg.category,
        brand=msg.brand,
        size=msg.size,
        material=msg.material,
        colour=msg.colour,
        price=msg.price.amount,
        currency=msg.price.currency or "EUR",
        images=[i.uri for i in msg.images if i.uri],
        image_bytes=[i.content for i in msg.images if i.content],
        inventory=[
            d.StockLevel(s.warehouse, s.bin, s.quantity, s.reorder_point) for s in msg.inventory
        ],
        attributes=dict(msg.attributes),
        listed=msg.listed if msg.HasField("listed") else True,
    )


def inventory_change_from_pb(msg: pb.InventoryUpdate) -> InventoryChange:
    if not msg.product_id:
        raise InvalidInput("inventory update without product_id")
    if not msg.warehouse and (msg.HasField("quantity") or msg.HasField("reorder_point")):
        raise InvalidInput("a stock change needs a warehouse")
    return InventoryChange(
        product_id=msg.product_id,
        warehouse=msg.warehouse,
        bin=msg.bin,
        quantity=msg.quantity if msg.HasField("quantity") else None,
        reorder_point=msg.reorder_point if msg.HasField("reorder_point") else None,
        price=msg.price.amount if msg.HasField("price") else None,
        currency=msg.price.currency if msg.HasField("price") and msg.price.currency else None,
    )


def listing_from_pb(msg: pb.Product) -> Listing:
    if any(i.uri for i in msg.images):
        raise InvalidInput("listing photos must be sent as bytes (images[].content)")
    return Listing(
        title=msg.title,
        description=msg.description,
        images=[i.content for i in msg.images if i.content],
        size=msg.size,
        material=msg.material,
        colour=msg.colour,
        brand=msg.brand,
        merchant=msg.merchant,
    )


def box_to_pb(box: tuple[int, int, int, int] | None) -> pb.Box | None:
    """None (field unset) when the box is unknown."""
    if box is None:
        return None
    return known_box_to_pb(box)


def known_box_to_pb(box: tuple[int, int, int, int]) -> pb.Box:
    return pb.Box(x0=box[0], y0=box[1], x1=box[2], y1=box[3])
