"""Item text building (vqrec.spark.text): pure functions, no Spark."""

from __future__ import annotations

import hashlib

from vqrec.spark.text import build_text, clean_field, parse_categories, text_hash


def test_fields_in_order_with_sentence_breaks():
    assert build_text("Dead Space 2", ["Games", "PC"], "EA") == "Dead Space 2. Games PC. EA"


def test_html_unescaped_quotes_and_newlines_removed():
    text = build_text("Manic Panic &quot;Goth&quot;\nWhite &amp; Co", None, None)
    assert text == "Manic Panic GothWhite & Co"


def test_tabs_become_spaces():
    assert clean_field("a\tb") == "a b"


def test_published_text_passes_unchanged():
    # The Scientific reference text is already "title. categories. brand. " (double spaces
    # and the trailing space included): the cleaner must not change it.
    title = "Gorilla 5000408  Glue, 4 ounce. Industrial & Scientific Tapes. Gorilla. "
    assert build_text(title) == title


def test_collapse_whitespace_option():
    assert build_text("  a   b  ", collapse_whitespace=True) == "a b"


def test_category_shapes():
    assert parse_categories(["a", "b"]) == ["a", "b"]
    assert parse_categories([["Beauty", "Makeup"], ["Face"]]) == ["Beauty", "Makeup", "Face"]
    assert parse_categories('["x", ["y"]]') == ["x", "y"]
    assert parse_categories("Tools") == ["Tools"]
    assert parse_categories("") == [] and parse_categories(None) == []


def test_empty_fields_give_empty_text():
    assert build_text(None, [], "  ") == ""
    assert build_text("", None, None) == ""


def test_brand_only_and_numeric_brand():
    assert build_text(None, None, 5) == "5"
    assert build_text("T.", None, "B") == "T. B"


def test_capped_length():
    assert build_text("x" * 50, max_chars=10) == "x" * 10


def test_text_hash_is_sha1_of_utf8():
    assert text_hash("café") == hashlib.sha1("café".encode()).hexdigest()
    assert text_hash("a") != text_hash("b")
