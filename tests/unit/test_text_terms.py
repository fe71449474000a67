"""Tokenizer and lexical vectors: Chinese without a dictionary, SKUs whole and split, the
bilingual attribute concepts, BM25 saturation, the bilingual lexicon of query words."""

from __future__ import annotations

import numpy as np
import pytest

from backend.domain.lexical import (
    ATTRIBUTE_QUERY_WEIGHT,
    document_terms,
    document_vector,
    english_rendering,
    match_terms,
    product_fields,
    query_terms,
    query_vector,
    term_index,
)
from backend.domain.lexicon import segment_han, translated_terms
from backend.domain.text_search import hybrid_dense
from backend.domain.text_terms import exact_key, sku_key, terms
from backend.domain.types import Product


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
    # A query's repeated word counts once ("trivet" has no entry in the bilingual lexicon).
    q = query_vector("trivet trivet")
    assert q is not None and q.indices.tolist() == [term_index("trivet")]
    np.testing.assert_array_equal(q.values, [1.0])


def _product(title: str, category: str = "") -> Product:
    return Product(
        product_id="p", sku="", merchant="m", title=title, description="", category=category,
        brand="", size="", material="", colour="", price=1.0, currency="EUR", images=[],
        inventory=[], attributes={}, listed=True, catalog_version=1)


def _matched(query: str, product: Product) -> set[str]:
    """The query's terms that the product's lexical vector carries (the store scores
    exactly these, each by the product's weight times the term's IDF)."""
    have = set(document_terms(product_fields(product)))
    return {t for t in query_terms(query) if t in have}


@pytest.mark.parametrize(("zh", "en"), [("红色 连衣裙", "red dress"), ("红色的鸟", "red bird"),
                                        ("棉 衬衫", "cotton shirt"), ("笔记本电脑", "laptop")])
def test_chinese_and_english_queries_match_the_same_words_of_a_product(zh: str, en: str) -> None:
    english = _product(f"{en.title()} for summer", category="misc/" + en.split()[-1])
    chinese = _product(f"夏季{zh.replace(' ', '')}")
    assert _matched(zh, english) and _matched(zh, english) == _matched(en, english)
    # And the other way round: an English query finds the Chinese title's words.
    assert _matched(en, chinese) and _matched(en, chinese) <= _matched(zh, chinese)


def test_unrelated_products_stay_unmatched() -> None:
    dress = _product("Red summer dress")
    assert _matched("笔记本电脑", dress) == set()
    assert _matched("蓝色 连衣裙", dress) == {"dress", "gown"} & _matched("dress", dress)


def test_chinese_is_segmented_by_the_longest_lexicon_word() -> None:
    # "鼠标" is a computer mouse, not "鼠" (the animal); "面包" is bread, not a bag ("包");
    # "马克杯" is a mug, not a horse ("马"); a colour word is not read as other words.
    assert segment_han("无线鼠标") == ["鼠标"]
    assert "bread" in translated_terms("面包") and "bag" not in translated_terms("面包")
    assert "mug" in translated_terms("马克杯") and "horse" not in translated_terms("马克杯")
    assert segment_han("金色的星星") == ["金色", "星星"]
    assert translated_terms("zxqv 12") == []


def test_english_synonyms_come_along() -> None:
    assert {"bug", "昆虫"} <= set(translated_terms("insect"))
    assert "office" in translated_terms("办公用品")


def test_attribute_words_weigh_less_beside_the_thing_asked_for() -> None:
    """"red bird" is about birds: its colour terms (the word and the concept) count
    ATTRIBUTE_QUERY_WEIGHT each, the noun 1; a query of attribute words alone keeps 1."""
    q = query_vector("red bird")
    assert q is not None
    weight = dict(zip(q.indices.tolist(), q.values.tolist(), strict=True))
    assert weight[term_index("bird")] == 1.0
    assert weight[term_index("red")] == weight[term_index("~colour:red")] \
        == ATTRIBUTE_QUERY_WEIGHT < 1.0
    # The Chinese twin weighs the same English terms the same way.
    zh = query_vector("红色的鸟")
    assert zh is not None
    zh_weight = dict(zip(zh.indices.tolist(), zh.values.tolist(), strict=True))
    for term in ("bird", "red", "~colour:red"):
        assert zh_weight[term_index(term)] == weight[term_index(term)]
    alone = query_vector("红色")
    assert alone is not None and set(alone.values.tolist()) == {1.0}


def test_chinese_queries_are_rendered_in_english_word_by_word() -> None:
    assert english_rendering("红色的鸟") == "red bird"
    assert english_rendering("红色 棉 衬衫") == "red cotton shirt"
    assert english_rendering("办公用品 A4") == "office a4"
    # No Chinese: nothing to render; a character the lexicon does not know: no rendering
    # (half a translation would ask for something else).
    assert english_rendering("red bird") is None
    assert english_rendering("奇怪的鸟") is None


def test_hybrid_dense_blends_a_rendering_and_keeps_unit_length() -> None:
    rng = np.random.default_rng(0)
    query, rendering = rng.normal(size=(2, 8)).astype(np.float32)
    assert hybrid_dense(query, None) is query
    blended = hybrid_dense(query, rendering)
    assert abs(float(np.linalg.norm(blended)) - 1.0) < 1e-5
    unit = [v / np.linalg.norm(v) for v in (query, rendering)]
    # Halfway: as close to the query as to its rendering.
    assert abs(float(blended @ unit[0]) - float(blended @ unit[1])) < 1e-5
