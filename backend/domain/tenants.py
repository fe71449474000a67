"""Tenant identity: the one canonical form of merchant and warehouse names.

Keys, access checks, SQL rows, search filters and vector payloads all compare names in this
form, so "Merchant-B", " merchant-b " and "MERCHANT-B" are one tenant everywhere: no layer
can treat them as two while another treats them as one.

Canonical form: Unicode NFKC (full-width and compatibility characters fold to their plain
form), surrounding whitespace trimmed, then case-folded (`str.casefold`, which also folds
"ß" to "ss", unlike `lower`). A valid name is non-empty, at most 255 characters once
canonical, and has no control characters and no ',' (API key scopes are comma lists).
"""

from __future__ import annotations

import unicodedata

from backend.errors import InvalidInput

MAX_NAME_CHARS = 255


def fold_name(value: str) -> str:
    """The canonical form, without validation (filters: a bad name simply matches nothing)."""
    return unicodedata.normalize("NFKC", value).strip().casefold()


def name_problem(canonical: str) -> str | None:
    """Why a canonical name is not a valid tenant name, or None when it is."""
    if not canonical:
        return "must not be empty"
    if len(canonical) > MAX_NAME_CHARS:
        return f"is longer than {MAX_NAME_CHARS} characters"
    if "," in canonical:
        return "must not contain ','"
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in canonical):
        return "must not contain control characters"
    return None


def tenant_name(value: object, what: str = "merchant") -> str:
    """The canonical form of a merchant or warehouse name; InvalidInput when it is not valid.
    The message names the field, not the value (which may be huge or binary)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    canonical = fold_name(value)
    problem = name_problem(canonical)
    if problem is not None:
        raise InvalidInput(f"{what} name {problem}")
    return canonical
