"""Text retrieval through the real vector store, for `prodsearch eval --task text`: the
lexical-only, dense-only and hybrid (RRF and DBSF) rows beside the encoder-only rows, on the
same openclipart gallery and queries, plus brand, SKU, exact-title and partial-title queries.

The gallery items become products: title from the file name, a brand (one of 40 invented
names, by a hash of the item id) and a unique SKU. Two catalogs are measured:

- `title`: title + brand + SKU, category withheld, like the encoder-only rows (the dense
  vector is the title's embedding, exactly as those rows use it);
- `catalog`: also the category path, as the indexer writes a real product (the dense vector
  is the embedding of `Product.text_for_encoding()`).

Everything runs in an embedded qdrant-edge store in a temporary folder, one query per
search exactly as the server sends it (`backend.domain.text_search`).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from backend.config import SearchSettings
from backend.domain.lexical import LEXICAL, english_rendering, product_vector
from backend.domain.payload import product_payload
from backend.domain.text_search import TEXT, exact_keys, hybrid_dense, text_prefetches
from backend.domain.text_terms import exact_key
from backend.domain.types import Filters, Product
from backend.stores.vectors import CollectionSpec, EdgeVectorStore, VectorPoint, point_id
from backend.stores.vectors.base import Prefetch

_SYLLABLES = ["zor", "vex", "quil", "land", "mar", "tek", "bri", "sol", "nov", "kai",
              "dro", "fen", "lum", "pax", "rho", "tiv"]
BRANDS = [(a + b).title() for a in _SYLLABLES for b in _SYLLABLES if a != b][::6][:40]
_MODEL = "eval"
K = 10


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big")


def brand_of(item_id: str) -> str:
    return BRANDS[_hash(item_id) % len(BRANDS)]


def sku_of(item_id: str, row: int) -> str:
    brand = brand_of(item_id)
    return f"{brand[:3].upper()}-{_hash('sku' + item_id) % 100_000:05d}-{row:04d}"


def make_products(items: Sequence[Any], with_category: bool) -> list[Product]:
    return [Product(
        product_id=f"i{row:05d}", sku=sku_of(it.item_id, row), merchant="eval",
        title=it.title, description="", category=it.category if with_category else "",
        brand=brand_of(it.item_id), size="", material="", colour="", price=1.0,
        currency="EUR", images=[], inventory=[], attributes={}, listed=True,
        catalog_version=1) for row, it in enumerate(items)]


def partial_title(title: str, rng: np.random.Generator) -> str | None:
    """The title less one word (the longest word of a two-word title); None for one word."""
    words = exact_key(title).split()
    if len(words) < 2:
        return None
    if len(words) == 2:
        return max(words, key=len)
    drop = int(rng.integers(len(words)))
    return " ".join(w for i, w in enumerate(words) if i != drop)


class _Index:
    """One catalog in an embedded store, searched as the server searches it."""

    def __init__(self, root: Path, products: list[Product], dense: np.ndarray) -> None:
        self.store = EdgeVectorStore(root)
        self.name = "eval"
        self.store.ensure_collection(CollectionSpec(self.name, {TEXT: dense.shape[1]},
                                                    sparse_vectors=[LEXICAL]))
        points = []
        for p, vec in zip(products, dense, strict=True):
            sparse = product_vector(p)
            points.append(VectorPoint(point_id(p.product_id, -1, _MODEL), {TEXT: vec},
                                      product_payload(p, -1, _MODEL),
                                      {LEXICAL: sparse} if sparse is not None else {}))
        self.store.upsert(self.name, points)
        self.store.build_index(self.name)

    def top(self, mode: str, text: str, dense: np.ndarray, depth: int) -> list[int]:
        if mode == "lexical":
            stages = [p for p in text_prefetches(text, dense, depth, semantic=False,
                                                 exact=False) if p.name == LEXICAL]
            if not stages:
                return []
            hits = self.store.search_fused(self.name, stages, Filters(), K, fusion="none")
        elif mode == "dense":
            hits = self.store.search_fused(self.name, [Prefetch(TEXT, dense, depth)],
                                           Filters(), K, fusion="none")
        else:
            fusion = mode.removeprefix("hybrid-")
            hits = self.store.search_fused(
                self.name, text_prefetches(text, dense, depth), Filters(), K,
                fusion=fusion, boost=exact_keys(text) or None)
        return [int(h.payload.product_id[1:]) for h in hits]

    def close(self) -> None:
        self.store.close()


def _metrics(tops: list[list[int]], rel: np.ndarray) -> dict[str, float]:
    ranked = np.zeros((len(tops), K), dtype=bool)
    for q, top in enumerate(tops):
        for r, g in enumerate(top[:K]):
            ranked[q, r] = rel[q, g]
    first = [int(np.argmax(row)) if row.any() else None for row in ranked]
    return {
        "recall@1": round(float(ranked[:, 0].mean()), 4),
        "recall@10": round(float(ranked.any(axis=1).mean()), 4),
        "mrr@10": round(float(np.mean([1 / (f + 1) if f is not None else 0.0
                                       for f in first])), 4),
    }


def _overlap(a: list[list[int]], b: list[list[int]]) -> float:
    return round(float(np.mean([len(set(x) & set(y)) / K for x, y in zip(a, b, strict=True)])),
                 4)


def _texts(sets: dict[str, tuple[list[str], list[str] | None, np.ndarray]], name: str,
           lang: str) -> list[str]:
    en, zh, _ = sets[name]
    return en if lang == "en" else (zh or [])


def _blended(texts: list[str], vectors: np.ndarray,
             encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    renderings = [english_rendering(t) for t in texts]
    wanted = [r for r in renderings if r]
    rendered = iter(encode(wanted)) if wanted else iter(())
    return np.stack([hybrid_dense(v, next(rendered) if r else None)
                     for v, r in zip(vectors, renderings, strict=True)]).astype(np.float32)


def hybrid_rows(inp: dict[str, Any]) -> dict[str, Any]:
    """Rows for the text task (see the module docstring). `inp` holds: items (the gallery),
    sets (name -> (en texts, zh texts or None, relevance)), docs (title embeddings),
    encode (texts -> unit vectors), embed_docs (texts, cache name -> vectors), query_rows
    (gallery rows of the evaluation items), seed."""
    items = inp["items"]
    encode: Callable[[list[str]], np.ndarray] = inp["encode"]
    rng = np.random.default_rng(inp["seed"])
    rows: list[int] = list(inp["query_rows"])
    n = len(items)
    sets: dict[str, tuple[list[str], list[str] | None, np.ndarray]] = dict(inp["sets"])

    titles = [exact_key(it.title) for it in items]
    by_title: dict[str, list[int]] = {}
    for g, t in enumerate(titles):
        by_title.setdefault(t, []).append(g)

    def rel_rows(relevant: list[list[int]]) -> np.ndarray:
        rel = np.zeros((len(relevant), n), dtype=bool)
        for q, gs in enumerate(relevant):
            rel[q, gs] = True
        return rel

    products = make_products(items, with_category=False)
    sets["sku"] = ([products[r].sku for r in rows], None, rel_rows([[r] for r in rows]))
    sets["exact_title"] = ([items[r].title for r in rows], None,
                           rel_rows([by_title[titles[r]] for r in rows]))
    partial = [(r, q) for r in rows if (q := partial_title(items[r].title, rng))]
    sets["partial_title"] = ([q for _, q in partial], None, rel_rows([[r] for r, _ in partial]))
    brand_of_row = [p.brand for p in products]
    sets["brand"] = (list(BRANDS), None, rel_rows(
        [[g for g in range(n) if brand_of_row[g] == b] for b in BRANDS]))

    query_vectors = {(name, lang): encode(texts) for name, (en, zh, _) in sets.items()
                     for lang, texts in (("en", en), ("zh", zh)) if texts}
    # The hybrid rows' dense half, as the server searches it: a Chinese query with an
    # English rendering blended with it (`text_search.hybrid_dense`).
    hybrid_vectors = {key: _blended(texts, query_vectors[key], encode)
                      for key, texts in ((k, _texts(sets, *k)) for k in query_vectors)}
    depth = SearchSettings().text_depth
    out: dict[str, Any] = {}
    catalogs = {
        "title": (False, np.asarray(inp["docs"], dtype=np.float32)),
        "catalog": (True, None),
    }
    for catalog, (with_category, dense_docs) in catalogs.items():
        prods = make_products(items, with_category)
        if dense_docs is None:
            dense_docs = np.asarray(inp["embed_docs"]([p.text_for_encoding() for p in prods],
                                                      "eval-catalog-products"), np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            index = _Index(Path(tmp), prods, dense_docs)
            try:
                for mode in ("lexical", "dense", "hybrid-rrf", "hybrid-dbsf"):
                    start = time.perf_counter()
                    row: dict[str, Any] = {}
                    for name, (en, zh, rel) in sets.items():
                        entry: dict[str, Any] = {}
                        tops: dict[str, list[list[int]]] = {}
                        for lang, texts in (("en", en), ("zh", zh)):
                            if not texts:
                                continue
                            vectors = (hybrid_vectors if mode.startswith("hybrid")
                                       else query_vectors)[(name, lang)]
                            tops[lang] = [index.top(mode, t, v, depth)
                                          for t, v in zip(texts, vectors, strict=True)]
                            entry[lang] = _metrics(tops[lang], rel)
                        if "zh" in tops:
                            entry["zh_en_overlap@10"] = _overlap(tops["zh"], tops["en"])
                        if name == "brand":
                            purity = [float(np.mean([brand_of_row[g] == BRANDS[q]
                                                     for g in top])) if top else 0.0
                                      for q, top in enumerate(tops["en"])]
                            entry["brand_precision@10"] = round(float(np.mean(purity)), 4)
                            entry["brand_only_top10"] = round(float(np.mean(
                                [p == 1.0 for p in purity])), 4)
                        entry["queries"] = len(en)
                        row[name] = entry
                    row["gallery"] = (f"{catalog} catalog in qdrant-edge: "
                                      + ("title, brand, SKU and category path" if with_category
                                         else "title, brand and SKU (category withheld)"))
                    row["seconds"] = round(time.perf_counter() - start, 2)
                    out[f"{mode} [{catalog}]"] = row
            finally:
                index.close()
    return {
        "variants": out,
        "query_sets": {
            "sku": "the evaluation item's SKU as stored (e.g. 'ZOR-01234-0042'); relevant = "
                   "that item",
            "exact_title": "the item's title as stored; relevant = every item with that "
                           "title (case and punctuation aside)",
            "partial_title": "the title less one word (the longer word of a two-word title); "
                             "one-word titles skipped; relevant = that item",
            "brand": "each of the 40 brand names; relevant = that brand's items; "
                     "brand_precision@10 = share of the top 10 of that brand, "
                     "brand_only_top10 = share of queries whose whole top 10 is that brand",
        },
    }
