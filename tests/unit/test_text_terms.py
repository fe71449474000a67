"""Tokenizer and lexical vectors: Chinese without a dictionary, SKUs whole and split, the
bilingual attribute concepts, BM25 saturation."""

from __future__ import annotations

import numpy as np

from backend.domain.lexical import (
    document_vector,
    match_terms,
    query_terms,
    query_vector,
    term_index,
)
from backend.domain.text_terms import exact_key, sku_key, terms


def test_chinese_gives_characters_and_adjacent_pairs() -> None:
    assert terms("红色的花") == ["红", "色", "的", "花", "红色", "色的", "的花"]
    # Mixed with latin: each script by its own rule.
    assert terms("棉T恤 blue") == ["棉", "恤", "t", "blue"]


def test_sku_kept_whole_without_separators_and_split() -> None:
    assert terms("AB-1234-xl") == ["ab-1234-xl", "ab1234xl", "ab", "1234", "xl"]
    # Full-width characters are the same SKU (NFKC).
    assert terms("ＡＢ－１２３４－ＸＬ") == terms("AB-1234-xl")
    assert sku_key("ab 1234/XL") == sku_key("AB-1234-xl") == "ab1234xl"
    # Letters and digits run together are kept whole and split too.
    assert terms("iPhone15") == ["iphone15", "iphone", "15"]
    # A hyphenated word without digits is just words.
    assert terms("T-Shirts") == ["t", "shirt"]


def test_latin_words_are_folded() -> None:
    assert terms("The Birds, boxes & berries of glass") == ["bird", "box", "berry", "glass"]
    assert exact_key("  Red   KETTLE! ") == exact_key("red kettle") == "red kettle"


def test_attribute_words_match_across_languages() -> None:
    assert "~colour:red" in query_terms("红色的花")
    assert "~colour:red" in query_terms("red flower")
    assert "~material:cotton" in query_terms("棉T恤")
    assert "~material:cotton" in query_terms("Cotton shirt")
    assert "~size:xl" in query_terms("XL")
    # A lone single-letter size is a size only when it is the whole query.
    assert "~size:m" in query_terms("M")
    assert "~size:m" not in query_terms("m and m sweets")
    # A query typing an SKU without separators still carries the joined form.
    assert "ab1234" in query_terms("AB 1234")


def test_match_terms_replace_attribute_words_by_their_concept() -> None:
    assert match_terms("红色的花") == ["花", "~colour:red"]
    assert match_terms("red cotton shirt") == ["shirt", "~colour:red", "~material:cotton"]


def test_term_frequency_saturates_and_title_outweighs_description() -> None:
    once = document_vector({"title": ["kettle"]})
    many = document_vector({"description": ["kettle"] * 40})
    assert once is not None and many is not None
    index = term_index("kettle")
    assert once.indices.tolist() == [index]
    # 40 repeats in a long description weigh less than k1 + 1 = 2.2, and less than twice one
    # title mention: repetition saturates, length normalises.
    assert many.values[0] < 2.2
    assert many.values[0] < 2 * once.values[0]
    assert document_vector({"title": []}) is None
    q = query_vector("kettle kettle")
    assert q is not None and q.indices.tolist() == [index]
    np.testing.assert_array_equal(q.values, [1.0])
