"""Item text: the one string per item that the sentence encoder sees.

Text = title, categories, brand, in that order (the VQ-Rec / UniSRec recipe). Each field is
HTML-unescaped (Amazon metadata carries ``&amp;`` and friends), loses its double quotes
and line breaks, and tabs / other control characters become spaces. Fields are joined with
a sentence break (". ") so that "Title", ["A", "B"], "Brand" reads "Title. A B. Brand".
The whole text is capped at ``max_chars`` characters.

A single field is otherwise left as it is: runs of spaces are *not* collapsed by default,
because the published preprocessing did not collapse them, and the Scientific reference text
(title already holding "title. categories. brand. ") must come out byte for byte the same
(64 of its items contain double spaces, all end with a space). ``collapse_whitespace=True``
turns on collapsing and stripping for sources that want it.

Pure Python, no Spark: the clean job applies :func:`build_text` through a pandas UDF, and
tests call it directly.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Iterable
from typing import Any

DEFAULT_MAX_CHARS = 2000

_REMOVE = re.compile(r'["\n\r]')
# Tabs, vertical tabs, form feeds and Unicode line/paragraph separators: never wanted
# inside a text (they also break the tab-separated .text files), but they separate words.
_CONTROL = re.compile(r"[\t\x0b\x0c\x1c-\x1f\x85\u2028\u2029\x00-\x08\x0e-\x1b\x7f]")
_SPACES = re.compile(r"\s+")


def clean_field(value: Any, collapse_whitespace: bool = False) -> str:
    """One metadata field as text: HTML-unescaped, without quotes/newlines/control chars.

    ``None`` becomes ``""``; non-strings (a numeric brand) are formatted with ``str``.
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    text = html.unescape(text)
    text = _REMOVE.sub("", text)
    text = _CONTROL.sub(" ", text)
    if collapse_whitespace:
        text = _SPACES.sub(" ", text).strip()
    return text


def _flatten(value: Any) -> Iterable[str]:
    if value is None:
        return
    if isinstance(value, list | tuple):
        for element in value:
            yield from _flatten(element)
    elif isinstance(value, dict):
        # Not a category shape we know; keep its values rather than dropping them silently.
        for element in value.values():
            yield from _flatten(element)
    else:
        yield str(value)


def parse_categories(value: Any) -> list[str]:
    """Categories as a flat list of strings.

    Accepts a list (Amazon 2018 ``category``), a list of category paths (Amazon 2014
    ``categories``), a JSON text of either (what the Spark reader passes on), or a plain
    string (one category).
    """
    if value is None:
        return []
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except ValueError:
                return [value]
        else:
            return [value] if stripped else []
    return [c for c in _flatten(value) if c.strip()]


def build_text(
    title: Any,
    categories: Any = None,
    brand: Any = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    collapse_whitespace: bool = False,
) -> str:
    """The item text: title, categories, brand; "" when none of them has any content.

    Every field but the last present one ends with a sentence break: a ``.`` is added
    unless the field already ends with one (trailing spaces ignored), then one space.
    """
    fields = [
        clean_field(title, collapse_whitespace),
        clean_field(" ".join(parse_categories(categories)), collapse_whitespace),
        clean_field(brand, collapse_whitespace),
    ]
    fields = [f for f in fields if f.strip()]
    if not fields:
        return ""
    parts = []
    for field in fields[:-1]:
        head = field.rstrip()
        parts.append(head if head.endswith(".") else head + ".")
    parts.append(fields[-1])
    text = " ".join(parts)
    if max_chars > 0 and len(text) > max_chars:
        text = text[:max_chars]
    return text


def text_hash(text: str) -> str:
    """sha1 hex digest of the UTF-8 text: the embedding cache key (ARCHITECTURE.md)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()
