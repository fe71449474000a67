"""The `lexical` sparse vector: BM25-style term weights of a product's text, and the query's
terms, so that the vector store scores title, brand, SKU and attribute words (with its IDF
modifier) beside the dense text vector, in the same query.

Document side (computed here, per product): each field's terms, weighted by field (a title
word says more than a description word), saturated by term frequency and normalised by
length as BM25 does (k1, b; the average length is a constant, not a corpus statistic, so a
product's vector never depends on the others'). The store multiplies by the term's IDF.

Query side: each distinct term once, with weight 1.

Attribute words are bilingual: a product whose colour is "red" also carries the concept
term for red, and so does a query that says "red" or "红色"; likewise materials and sizes.
So "红色" / "red", "棉" / "cotton", "XL" match lexically as the matching filter would.
Product and category words are bilingual on the query side (`lexicon.py`): "连衣裙" also
asks for "dress", so a Chinese query's lexical half matches an English catalog.
"""

from __future__ import annotations

import zlib

import numpy as np

from backend.domain.attribute_names import SIZES, TABLES, attribute_names
from backend.domain.lexicon import english_name, segment_han, translated_terms
from backend.domain.text_terms import (
    HAN_RUN,
    exact_key,
    name_terms,
    normalise,
    sku_key,
    terms,
)
from backend.domain.types import Product
from backend.domain.vectors import SparseVector

LEXICAL = "lexical"

# BM25 constants: k1 how fast repeats saturate, b how much a long text is discounted;
# AVG_TERMS is a typical product's weighted term count (title + attributes + a short
# description), fixed so that one product's vector never depends on the rest of the catalog.
K1 = 1.2
B = 0.75
AVG_TERMS = 40.0

# How much one occurrence of a term counts, by the field it comes from.
FIELD_WEIGHTS: dict[str, float] = {
    "title": 2.0,
    "brand": 2.0,
    "sku": 3.0,
    "category": 1.0,
    "attribute": 1.0,
    "description": 0.5,
}
# Long descriptions would drown the title; their first words are what a shopper types.
_DESCRIPTION_CHARS = 400

def _concept(kind: str, value: str) -> str:
    return f"~{kind}:{value}"


# (surface form, concept term) for every name of every attribute value.
_SURFACES = [(normalise(name), _concept(kind, value))
             for kind, value, name in attribute_names()]
# Chinese attribute name -> its canonical (English) value: "红色" -> "red".
_HAN_ATTRIBUTE_VALUES = {normalise(name): value for _, value, name in attribute_names()
                         if HAN_RUN.fullmatch(normalise(name))}


def _surface_terms(concept: str) -> list[str]:
    """The terms of every name of an attribute concept, so that "红色" also asks for the
    word "red" in a title and "red" for "红色" (Chinese names as their character pairs)."""
    out: list[str] = []
    for surface, c in _FREE_TEXT_SURFACES:
        if c == concept:
            out += name_terms(surface)
    return out


# Single-letter sizes ("s", "m", "l") are too ambiguous inside free text; only the size
# field and a query that is exactly that size say them. (Colours are named by two
# characters in Chinese, "红色": a lone "红" is also in "红酒", red wine.)
_FREE_TEXT_SURFACES = [(s, c) for s, c in _SURFACES if len(s) > 1 or not s.isascii()]


def concepts_in(text: str) -> list[str]:
    """Concept terms named in a free text: latin names as whole words (plural folded),
    Chinese names as substrings (no spaces to split on)."""
    folded = normalise(text)
    words = set(terms(folded)) | set(folded.split())
    found = []
    for surface, concept in _FREE_TEXT_SURFACES:
        if surface.isascii():
            if surface in words or (" " in surface and surface in folded):
                found.append(concept)
        elif surface in folded:
            found.append(concept)
    return sorted(set(found))


def attribute_concepts(kind: str, value: str) -> list[str]:
    """Concept terms of one attribute field's value (any name of it, either language)."""
    folded = normalise(value).strip()
    table = TABLES[kind]
    for canonical, names in table.items():
        if folded in (canonical, *(normalise(n) for n in names)):
            return [_concept(kind, canonical)]
    return []


def term_index(term: str) -> int:
    """A term's index in the sparse vector: a stable 32-bit hash (the same in every process;
    Python's own hash is salted)."""
    return zlib.crc32(term.encode("utf-8"))


def product_fields(product: Product) -> dict[str, list[str]]:
    """Field -> terms of a product, with the bilingual concept terms of its attributes."""
    attrs: list[str] = []
    for kind, value in (("colour", product.colour), ("material", product.material),
                        ("size", product.size)):
        if value:
            attrs += terms(value) + attribute_concepts(kind, value)
    for value in product.attributes.values():
        attrs += terms(value)
    text = f"{product.title} {product.description[:_DESCRIPTION_CHARS]}"
    return {
        "title": terms(product.title) + concepts_in(product.title),
        "brand": terms(product.brand),
        "sku": terms(product.sku) + ([sku_key(product.sku)] if product.sku else []),
        "category": terms(product.category.replace("/", " ")),
        "attribute": attrs + [c for c in concepts_in(text) if c not in attrs],
        "description": terms(product.description[:_DESCRIPTION_CHARS]),
    }


def document_vector(fields: dict[str, list[str]]) -> SparseVector | None:
    """BM25 term weights of a document given as field -> terms; None when it has no terms."""
    tf: dict[str, float] = {}
    for name, field_terms in fields.items():
        weight = FIELD_WEIGHTS[name]
        for term in field_terms:
            tf[term] = tf.get(term, 0.0) + weight
    if not tf:
        return None
    length = sum(tf.values())
    norm = K1 * (1 - B + B * length / AVG_TERMS)
    weights: dict[int, float] = {}
    for term, freq in tf.items():
        index = term_index(term)
        # A hash collision (rare at 2^32) adds the two terms' weights.
        weights[index] = weights.get(index, 0.0) + freq * (K1 + 1) / (freq + norm)
    return _sparse(weights)


def product_vector(product: Product) -> SparseVector | None:
    return document_vector(product_fields(product))


def query_terms(text: str) -> list[str]:
    """A query's distinct terms, with the concepts it names (a query that is exactly a
    single-letter size, "M", names that size too) and the terms of the lexicon's words it
    names in the other language ("连衣裙" also asks for "dress", "dress" for "连衣裙")."""
    return _query_parts(text)[0]


def _query_parts(text: str) -> tuple[list[str], set[str]]:
    """(the query's terms, the attribute concepts it names)."""
    found = list(dict.fromkeys(terms(text)))
    concepts = concepts_in(text)
    found += concepts
    # Sizes are left out: their names are generic words ("large", "x") and a product's size
    # field carries the size concept anyway.
    found += [t for c in concepts if not c.startswith("~size:") for t in _surface_terms(c)]
    found += translated_terms(text)
    whole = normalise(text).strip()
    if whole in SIZES:
        concepts.append(_concept("size", whole))
        found.append(concepts[-1])
    key = sku_key(text)
    if key and key not in found and any(c.isdigit() for c in key):
        found.append(key)  # an SKU typed with other separators, or none
    return list(dict.fromkeys(found)), set(concepts)


def query_vector(text: str) -> SparseVector | None:
    """The query's terms, weight 1 each (the store's IDF weighs them), attribute words
    `ATTRIBUTE_QUERY_WEIGHT` when the query also names something else; None without
    terms."""
    found, concepts = _query_parts(text)
    if not found:
        return None
    attribute = _attribute_terms(concepts)
    weight = ATTRIBUTE_QUERY_WEIGHT if any(t not in attribute for t in found) else 1.0
    weights: dict[int, float] = {}
    for t in found:
        index = term_index(t)
        weights[index] = max(weights.get(index, 0.0), weight if t in attribute else 1.0)
    return _sparse(weights)


# A colour or material in a query is said twice over (its word and its concept, in both
# languages), and what the query is about is usually the other word ("red bird" is about
# birds): each attribute term counts this much beside the query's other words.
ATTRIBUTE_QUERY_WEIGHT = 0.5


def _attribute_terms(concepts: set[str]) -> set[str]:
    """The query terms that name one of these attribute concepts: the concepts and every
    term of their names (which holds the names' `_surface_terms`)."""
    return concepts | {t for surface, c in _FREE_TEXT_SURFACES if c in concepts
                       for t in terms(surface)}


def _sparse(weights: dict[int, float]) -> SparseVector:
    order = sorted(weights)
    return SparseVector(np.asarray(order, dtype=np.int64),
                        np.asarray([weights[i] for i in order], dtype=np.float32))


# Chinese particles that a query says and a product title rarely does.
_HAN_STOP = frozenset("的了和是在与及")
# Distinct terms kept in a point's payload for facet matching; a longer product text keeps
# its first ones (title, brand, SKU come first).
MAX_PAYLOAD_TERMS = 256


def document_terms(fields: dict[str, list[str]]) -> list[str]:
    """A product's distinct terms, for the payload that facet filters match against."""
    return list(dict.fromkeys(t for f in fields.values() for t in f))[:MAX_PAYLOAD_TERMS]


def match_terms(text: str) -> list[str]:
    """The terms a product must all have to match a query lexically (for facet counts):
    words, SKUs, single Chinese characters (bigrams would demand the query's exact
    phrasing) and attribute concepts in place of the words that name them."""
    concepts = concepts_in(text)
    whole = normalise(text).strip()
    if whole in SIZES:
        concepts.append(_concept("size", whole))
    named = {t for surface, concept in _SURFACES if concept in concepts
             for t in terms(surface)}
    out = [t for t in dict.fromkeys(terms(text))
           if t not in named and not (len(t) == 2 and HAN_RUN.fullmatch(t))
           and t not in _HAN_STOP and not _han_named(t, named)]
    return out + sorted(set(concepts))


def _han_named(term: str, named: set[str]) -> bool:
    """A Chinese character that belongs to a named attribute word ("红" of "红色")."""
    return bool(HAN_RUN.fullmatch(term)) and any(term in n for n in named)


def title_key(title: str) -> str:
    return exact_key(title)


def english_rendering(text: str) -> str | None:
    """A query with Chinese in it said in English word by word through the lexicon and the
    attribute names ("红色的鸟" -> "red bird"), for the dense half of the query to search with
    beside the query itself; None when there is no Chinese or a Chinese character is neither
    a known word nor a particle (a partial rendering would change what is asked)."""
    folded = normalise(text)
    if not HAN_RUN.search(folded):
        return None
    out: list[str] = []
    position = 0
    for match in HAN_RUN.finditer(folded):
        out.append(folded[position:match.start()].strip())
        position = match.end()
        words = segment_han(match.group())
        covered = sum(map(len, words)) + sum(c in _HAN_STOP for c in match.group())
        if covered < len(match.group()):
            return None
        for word in words:
            english = _HAN_ATTRIBUTE_VALUES.get(word) or english_name(word)
            if english is None:
                return None
            out.append(english)
    out.append(folded[position:].strip())
    return " ".join(w for w in out if w) or None
