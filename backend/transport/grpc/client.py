"""Thin gRPC client used by the CLI's client commands. Imports no model code, so a client
command answers in well under a second."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2_grpc as rpc

DEFAULT_ADDR = "127.0.0.1:50051"


def default_addr() -> str:
    port = os.environ.get("PRODSEARCH_GRPC_PORT")
    return f"127.0.0.1:{port}" if port else DEFAULT_ADDR


def channel(addr: str) -> grpc.Channel:
    """Plain text, or TLS when PRODSEARCH_CLIENT_CA (the server's CA, PEM) is set; for mutual
    TLS also PRODSEARCH_CLIENT_CERT and PRODSEARCH_CLIENT_KEY."""
    ca = os.environ.get("PRODSEARCH_CLIENT_CA", "")
    if not ca:
        return grpc.insecure_channel(addr)
    cert = os.environ.get("PRODSEARCH_CLIENT_CERT", "")
    key = os.environ.get("PRODSEARCH_CLIENT_KEY", "")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None,
    )
    return grpc.secure_channel(addr, credentials)


def metadata() -> list[tuple[str, str]]:
    key = os.environ.get("PRODSEARCH_API_KEY", "")
    return [("x-api-key", key)] if key else []


def parse_where(pairs: Sequence[str]) -> dict[str, str]:
    where: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--where expects field=value, got {pair!r}")
        where[key.strip()] = value.strip()
    return where


def build_search_request(
    image: Path | None = None,
    text: str = "",
    product_id: str = "",
    category: str = "",
    where: dict[str, str] | None = None,
    min_price: float | None = None,
    max_price: float | None = None,
    in_stock: bool = False,
    top_k: int = 10,
    diversify: bool = False,
) -> pb.SearchRequest:
    price = pb.PriceRange()
    if min_price is not None:
        price.min = min_price
    if max_price is not None:
        price.max = max_price
    return pb.SearchRequest(
        image=image.read_bytes() if image else b"",
        text=text,
        product_id=product_id,
        filters=pb.Filters(
            category=category, where=where or {}, price=price, in_stock_only=in_stock
        ),
        top_k=top_k,
        diversify=diversify,
    )


def search(addr: str, request: pb.SearchRequest, timeout: float = 10.0) -> pb.SearchResponse:
    with channel(addr) as ch:
        response: pb.SearchResponse = rpc.ProductSearchStub(ch).Search(
            request, timeout=timeout, metadata=metadata()
        )
        return response


def hit_summary(hit: pb.SearchHit) -> dict[str, Any]:
    p = hit.product
    return {
        "product_id": p.product_id,
        "sku": p.sku,
        "title": p.title,
        "category": p.category,
        "score": round(hit.score, 4),
        "merchant": p.merchant,
        "brand": p.brand,
        "size": p.size,
        "material": p.material,
        "colour": p.colour,
        "price": p.price.amount,
        "currency": p.price.currency,
        "in_stock": sum(s.quantity for s in p.inventory),
        "matched_image": hit.matched_image,
    }


def search_json(response: pb.SearchResponse) -> str:
    return json.dumps(
        {
            "results": [hit_summary(h) for h in response.hits],
            "next_page_token": response.next_page_token,
            "model_version": response.model_version,
            "catalog_version": response.catalog_version,
        },
        ensure_ascii=False,
        indent=2,
    )


def search_table(response: pb.SearchResponse) -> str:
    if not response.hits:
        return "no results"
    lines = [f"{'#':>2}  {'score':>6}  {'sku':<14} {'category':<28} {'price':>8}  title"]
    for rank, hit in enumerate(response.hits, start=1):
        s = hit_summary(hit)
        lines.append(
            f"{rank:>2}  {s['score']:>6.3f}  {s['sku']:<14.14} {s['category']:<28.28} "
            f"{s['price']:>8.2f}  {s['title']} [{s['colour']}, {s['material']}, {s['size']}]"
        )
    return "\n".join(lines)


def message_json(message: Any) -> str:
    return json.dumps(MessageToDict(message), ensure_ascii=False, indent=2)
