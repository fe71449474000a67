"""Terms of product text and queries for lexical matching: English, Chinese and SKUs alike.

- Text is NFKC-normalised and case-folded, so full-width "ＡＢ－１２" and "ab-12" agree.
- Chinese (Han characters) has no spaces: every character and every pair of adjacent
  characters is a term. Bigrams carry most words ("红色", "棉布"), unigrams catch the
  one-character ones ("棉", "鸟"), and no dictionary has to know the catalog's words.
- Latin text is split on anything that is not a letter or digit, with a light English plural
  fold ("birds" -> "bird", "boxes" -> "box", "berries" -> "berry").
- An SKU-like token (letters and digits joined by '-', '_', '.' or '/', with a digit
  somewhere) is kept whole and without its separators, as well as split: "AB-1234-xl" gives
  "ab-1234-xl", "ab1234xl", "ab", "1234", "xl". A query can type it either way.
"""

from __future__ import annotations

import re
import unicodedata

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
HAN_RUN = re.compile(f"[{_HAN}]+")
# A run of letters/digits (no underscore), optionally joined by SKU separators.
_WORD_RUN = re.compile(rf"(?:(?![{_HAN}])[^\W_])+(?:[-_./](?:(?![{_HAN}])[^\W_])+)*")
_SEPARATORS = re.compile(r"[-_./]")
_DIGIT = re.compile(r"\d")
_LETTERS_DIGITS = re.compile(r"[^\W\d_]+|\d+")

# Words too common in product text to say anything; the store's IDF would weigh them down
# anyway, but leaving them out keeps vectors short.
STOP_WORDS = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "is", "it", "of",
     "on", "or", "the", "this", "to", "with"])


def normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def fold_plural(word: str) -> str:
    """'birds' -> 'bird', 'boxes' -> 'box', 'berries' -> 'berry'; leaves 'glass', 'bus'."""
    if len(word) <= 3 or not word.isalpha() or not word.isascii():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def han_terms(run: str) -> list[str]:
    """Unigrams and adjacent bigrams of a run of Han characters."""
    return [*run, *(run[i:i + 2] for i in range(len(run) - 1))]


def name_terms(name: str) -> list[str]:
    """The terms that say a vocabulary name (a colour, a lexicon word) in a text: a latin
    name's words; a Chinese name's character pairs, not its single characters, which many
    other words share (a one-character name is itself)."""
    if len(name) > 1 and HAN_RUN.fullmatch(name):
        return han_terms(name)[len(name):]
    return terms(name)


def terms(text: str) -> list[str]:
    """The lexical terms of a text, in order, repeats kept (term frequency counts them)."""
    text = normalise(text)
    out: list[str] = []
    for match in HAN_RUN.finditer(text):
        out.extend(han_terms(match.group()))
    for match in _WORD_RUN.finditer(text):
        token = match.group()
        parts = _SEPARATORS.split(token)
        if len(parts) > 1 and _DIGIT.search(token):
            out.append(token)
            out.append("".join(parts))
        for part in parts:
            pieces = _LETTERS_DIGITS.findall(part)
            if len(pieces) > 1 and len(parts) == 1:
                out.append(part)  # "iphone15": whole, and "iphone" + "15" below
            for piece in pieces:
                if piece not in STOP_WORDS:
                    out.append(fold_plural(piece))
    return out


def exact_key(text: str) -> str:
    """A text as an exact-match key: case, width, punctuation and spacing do not matter."""
    return " ".join(w for w in _words_for_key(normalise(text)))


def _words_for_key(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text)


def sku_key(sku: str) -> str:
    """An SKU as typed in a query: case, width and separators do not matter."""
    return "".join(_words_for_key(normalise(sku)))
