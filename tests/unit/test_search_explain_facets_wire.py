"""Explain and facets on the wire: the CLI's flags become request fields, the request becomes
the domain query, the domain result becomes the response, and the CLI prints both."""

from __future__ import annotations

import json

from backend.cli import _facet_keys, build_parser
from backend.domain.types import Product, SearchHit, SearchResult
from backend.transport.grpc import client, convert
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb


def test_cli_flags_reach_the_domain_query() -> None:
    args = build_parser().parse_args(
        ["search", "--text", "red kettle", "--explain", "--facets", "brand,price",
         "--facets", "colour"])
    keys = _facet_keys(args.facets)
    assert args.explain and keys == ["brand", "price", "colour"]
    assert _facet_keys(["all"]) == ["category", "size", "material", "colour", "brand",
                                    "merchant", "price"]
    request = client.build_search_request(text="red kettle", explain=True, facets=keys)
    wire = pb.SearchRequest.FromString(request.SerializeToString())
    query = convert.search_query_from_pb(wire)
    assert query.explain and query.facets == ["brand", "price", "colour"]
    assert not convert.search_query_from_pb(pb.SearchRequest(text="x")).explain


def test_result_parts_and_facets_reach_the_printed_output() -> None:
    product = Product("p1", "SK-1", "shop", "Red kettle", "", "home/kitchen", "acme", "", "",
                      "red", 12.0, "EUR", [], [], {}, True, 1)
    result = SearchResult(
        hits=[SearchHit(product, 1000.05, -1, parts={"dense_text": 0.61, "lexical": 7.5,
                                                       "exact": 1.0, "fused_rank": 0.0})],
        next_page_token="", model_version="m", catalog_version=1,
        facets={"brand": [("acme", 3), ("globex", 1)], "price": [("0-10", 0), ("10+", 4)]})
    response = pb.SearchResponse(
        hits=[pb.SearchHit(product=pb.Product(sku="SK-1", title="Red kettle"),
                           score=result.hits[0].score, score_parts=result.hits[0].parts)],
        facets=convert.facets_to_pb(result.facets))
    response = pb.SearchResponse.FromString(response.SerializeToString())
    doc = json.loads(client.search_json(response))
    assert doc["facets"] == {"brand": [{"value": "acme", "count": 3},
                                       {"value": "globex", "count": 1}],
                             "price": [{"value": "0-10", "count": 0},
                                       {"value": "10+", "count": 4}]}
    assert doc["results"][0]["score_parts"] == {"dense_text": 0.61, "exact": 1.0,
                                                "fused_rank": 0.0, "lexical": 7.5}
    table = client.search_table(response)
    assert "brand: acme (3), globex (1)" in table
    assert "price: 0-10 (0), 10+ (4)" in table
    assert "lexical=7.5" in table and "exact=1" in table
