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
    explain: bool = False,
    facets: Sequence[str] = (),
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
        explain=explain,
        facets=list(facets),
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
        # Photo queries: where the product was found (uploaded-image pixels) when verified.
        "box": _box(hit.box) if hit.HasField("box") else None,
        "score_parts": {k: round(v, 4) for k, v in sorted(hit.score_parts.items())},
    }


def _box(box: pb.Box) -> list[int]:
    return [round(box.x0), round(box.y0), round(box.x1), round(box.y1)]


def search_json(response: pb.SearchResponse) -> str:
    return json.dumps(
        {
            "results": [hit_summary(h) for h in response.hits],
            "next_page_token": response.next_page_token,
            "model_version": response.model_version,
            "catalog_version": response.catalog_version,
            "facets": facets_summary(response),
        },
        ensure_ascii=False,
        indent=2,
    )


def facets_summary(response: pb.SearchResponse) -> dict[str, list[dict[str, Any]]]:
    return {f.key: [{"value": v.value, "count": v.count} for v in f.values]
            for f in response.facets}


def _parts_line(parts: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:g}" for k, v in parts.items())


def search_table(response: pb.SearchResponse) -> str:
    if not response.hits:
        return "no results"
    boxes = any(hit.HasField("box") for hit in response.hits)
    box_head = f"{'box in photo':<22} " if boxes else ""
    lines = [f"{'#':>2}  {'score':>6}  {'sku':<14} {box_head}{'category':<28} {'price':>8}  "
             "title"]
    for rank, hit in enumerate(response.hits, start=1):
        s = hit_summary(hit)
        box = f"{s['box'] or '-'!s:<22} " if boxes else ""
        lines.append(
            f"{rank:>2}  {s['score']:>6.3f}  {s['sku']:<14.14} {box}{s['category']:<28.28} "
            f"{s['price']:>8.2f}  {s['title']} [{s['colour']}, {s['material']}, {s['size']}]"
        )
        if s["score_parts"]:
            lines.append(f"{'':>10}{_parts_line(s['score_parts'])}")
    for key, values in facets_summary(response).items():
        counts = ", ".join(f"{v['value']} ({v['count']})" for v in values) or "-"
        lines.append(f"{key}: {counts}")
    return "\n".join(lines)


def message_json(message: Any) -> str:
    return json.dumps(MessageToDict(message), ensure_ascii=False, indent=2)


def match(addr: str, images: Sequence[Path], title: str = "", size: str = "",
          material: str = "", colour: str = "", brand: str = "", top_k: int = 5,
          timeout: float = 30.0) -> pb.MatchResponse:
    listing = pb.Product(
        title=title, size=size, material=material, colour=colour, brand=brand,
        images=[pb.ProductImage(content=p.read_bytes()) for p in images],
    )
    with channel(addr) as ch:
        response: pb.MatchResponse = rpc.ProductSearchStub(ch).MatchProduct(
            pb.MatchRequest(listing=listing, top_k=top_k), timeout=timeout, metadata=metadata())
        return response


def match_rows(response: pb.MatchResponse) -> list[dict[str, Any]]:
    return [
        {
            "sku": c.product.sku,
            "product_id": c.product.product_id,
            "title": c.product.title,
            "verdict": pb.Verdict.Name(c.verdict),
            "probability": round(c.probability, 4),
            "similarity": round(c.similarity, 4),
            "diff": {d.field: {"listing": d.listing_value, "catalog": d.catalog_value}
                     for d in c.diff},
        }
        for c in response.candidates
    ]


def match_json(response: pb.MatchResponse) -> str:
    return json.dumps({"results": match_rows(response), "model_version": response.model_version},
                      ensure_ascii=False, indent=2)


def match_table(response: pb.MatchResponse) -> str:
    if not response.candidates:
        return "no candidates"
    lines = [f"{'verdict':<9} {'prob':>5}  {'sku':<14} title / differences"]
    for row in match_rows(response):
        diff = ", ".join(f"{k}: {v['listing']} vs {v['catalog']}" for k, v in row["diff"].items())
        lines.append(f"{row['verdict']:<9} {row['probability']:>5.2f}  {row['sku']:<14.14} "
                     f"{row['title']}" + (f"  [{diff}]" if diff else ""))
    return "\n".join(lines)


def restock(addr: str, image: Path, warehouse: str, bin_: str = "", top_k: int = 5,
            timeout: float = 60.0) -> pb.RestockResponse:
    request = pb.RestockRequest(image=image.read_bytes(), warehouse=warehouse, bin=bin_,
                                top_k=top_k)
    with channel(addr) as ch:
        response: pb.RestockResponse = rpc.ProductSearchStub(ch).FindRestockMatches(
            request, timeout=timeout, metadata=metadata())
        return response


def restock_rows(response: pb.RestockResponse) -> list[dict[str, Any]]:
    return [
        {
            "sku": m.product.sku,
            "product_id": m.product.product_id,
            "title": m.product.title,
            "score": round(m.score, 4),
            "box": _box(m.box),
            "facings": m.facings or 1,
            "facing_boxes": [_box(b) for b in m.facing_boxes],
            "stock": [{"warehouse": s.warehouse, "bin": s.bin, "quantity": s.quantity,
                       "reorder_point": s.reorder_point} for s in m.stock],
            "low_stock": m.low_stock,
        }
        for m in response.matches
    ]


def restock_json(response: pb.RestockResponse) -> str:
    return json.dumps({"results": restock_rows(response),
                       "model_version": response.model_version}, ensure_ascii=False, indent=2)


def restock_table(response: pb.RestockResponse) -> str:
    if not response.matches:
        return "no catalog items recognised"
    lines = [f"{'score':>6}  {'sku':<14} {'box':<22} {'facings':>7}  {'stock':<24} title"]
    for row in restock_rows(response):
        stock = ", ".join(f"{s['bin']}:{s['quantity']}/{s['reorder_point']}"
                          for s in row["stock"]) or "none here"
        flag = "  LOW STOCK" if row["low_stock"] else ""
        lines.append(f"{row['score']:>6.3f}  {row['sku']:<14.14} {row['box']!s:<22} "
                     f"{row['facings']:>7}  {stock:<24.24} {row['title']}{flag}")
    return "\n".join(lines)
