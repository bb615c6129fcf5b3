"""A generated corpus of bad raw input for the clean stage, with the expected fate of every row.

Everything is written from code here (nothing downloaded or copied): :func:`build_corpus`
lays out raw domain folders under a root and returns, per generated row, what the clean stage
must do with it, so tests compare row by row, not only counts.

Row-level cases live in domains that one clean run processes together:

* ``Mixed`` (Amazon 2018 layout): a dense core of valid events (6 users x 6 items, survives
  the default 5-core) and valid events that the k-core must remove, mixed with broken
  ratings lines and broken ``meta_*.json`` lines of every kind; a second ratings file with
  CRLF line endings, a space in its name, a cross-file duplicate and a last line cut
  without its newline; a second meta file with glob characters in its name.
* ``Gen`` (generic layout, JSON lines): the same kinds where the format gives them a meaning
  (wrong JSON types, ISO timestamps, missing keys).
* ``GenCsv`` (generic layout, CSV with a header): RFC 4180 quoting (commas, doubled quotes
  and line breaks inside quoted fields: one record over several lines), rows without
  their optional last columns, a quote never closed.
* ``AllBad``: no valid event at all (the domain must still get its tables and report), and
  a 0-byte ratings file and a 0-byte meta file beside its other files.

Folder-level cases (:class:`FolderCase`) abort a run as a whole, so each gets its own folder:
a domain folder with no files, a meta file without ratings, a ratings file without meta, a
truncated gzip, a path that is a file, domain folders whose names are not safe names.

The expected outcome of a row is ``VALID`` or the quarantine reason of vqrec/spark/clean.py. A
``VALID`` event must end in the clean interactions or be removed by the k-core (tests
recompute the k-core from the valid events alone); it must never be quarantined.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

VALID = "valid"
T0 = 1_400_000_000  # 2014-05-13: inside the clean stage's default timestamp bounds
HUGE_TITLE_CHARS = 1_000_000


@dataclass(frozen=True)
class Row:
    """One generated raw row and its expected outcome."""

    domain: str
    source: str  # file name, as the quarantine table names it
    line: int  # 1-based line in the file
    kind: str  # the bad-input kind (or the valid-row kind) this row exercises
    expected: str  # VALID or the quarantine reason
    event: tuple[str, str, int] | None = None  # (user_id, item_id, ts) of a VALID event
    item: str | None = None  # item_id of a VALID item line
    span: int = 1  # lines the row takes (a CSV record whose quoted field holds line breaks)


@dataclass(frozen=True)
class FolderCase:
    """A raw folder that makes the clean run fail as a whole, with a clear message."""

    kind: str
    argv: list[str]  # `vqrec clean` arguments, without --lake / --version
    exit_code: int  # 2: refused before reading; 1: Spark could not read a file
    message: tuple[str, ...]  # fragments the error line must contain (file/folder names)


@dataclass
class Corpus:
    """What :func:`build_corpus` wrote."""

    root: Path
    domains: dict[str, Path]  # row-level domains, cleaned together in one run
    rows: list[Row]
    folder_cases: list[FolderCase]
    bad_names: list[str]  # domain names that must be refused (some also exist as folders)
    bad_name_folders: dict[str, Path] = field(default_factory=dict)

    def kinds(self) -> set[str]:
        """The distinct bad-input kinds tried (valid-row kinds excluded)."""
        row_kinds = {r.kind for r in self.rows if not r.kind.startswith("valid_")}
        return row_kinds | {c.kind for c in self.folder_cases} | {"unsafe_domain_name"}

    def bad_rows(self) -> list[Row]:
        """Rows of a bad-input kind (some of them valid on purpose, e.g. a numeric title)."""
        return [r for r in self.rows if not r.kind.startswith("valid_")]


class _File:
    """Lines of one raw file, each with its expected outcome; written in one go."""

    def __init__(
        self, domain: str, path: Path, newline: bytes = b"\n", header: str | None = None
    ) -> None:
        self.domain, self.path, self.newline = domain, path, newline
        self.lines: list[bytes] = [header.encode()] if header is not None else []
        self.rows: list[Row] = []

    def add(
        self,
        raw: bytes | str,
        kind: str,
        expected: str,
        event: tuple[str, str, int] | None = None,
        item: str | None = None,
        multiline: bool = False,
    ) -> None:
        data = raw.encode() if isinstance(raw, str) else raw
        assert multiline or (b"\n" not in data and b"\r" not in data), "one row per line"
        line = len(self.lines) + 1
        self.lines += data.split(b"\n")
        span = data.count(b"\n") + 1
        self.rows.append(Row(self.domain, self.path.name, line, kind, expected, event, item, span))

    def event(self, item: str, user: str, ts: int, kind: str = "valid_event") -> None:
        """A valid ratings line (Amazon layout: item,user,rating,ts)."""
        self.add(f"{item},{user},5.0,{ts}", kind, VALID, event=(user, item, ts))

    def write(self, final_newline: bool = True) -> list[Row]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.newline.join(self.lines) + (self.newline if final_newline else b"")
        if self.path.name.endswith(".gz"):
            with gzip.open(self.path, "wb") as f:
                f.write(data)
        else:
            self.path.write_bytes(data)
        return self.rows


def _meta(asin: object, title: object = None, **extra: object) -> str:
    record = {"asin": asin}
    if title is not None:
        record["title"] = title
    return json.dumps({**record, **extra})


# ---------------------------------------------------------------------------------------
# Row-level domains


def _mixed(folder: Path) -> list[Row]:
    """Amazon layout: valid core + one or more rows of every bad kind."""
    d = folder.name
    users = [f"u{k:02d}" for k in range(1, 7)]
    items = [f"i{k:02d}" for k in range(1, 7)]
    ratings = _File(d, folder / f"{d}.csv")
    ts = T0
    for u in users:
        for i in items:
            ratings.event(i, u, ts)
            ts += 60
    # Valid, but removed by the 5-core: a user with 2 events, an item with 1 event.
    ratings.event("i01", "u_few", T0 + 7, kind="valid_kcore_removed")
    ratings.event("i02", "u_few", T0 + 8, kind="valid_kcore_removed")
    ratings.event("i_rare", "u01", T0 + 9, kind="valid_kcore_removed")
    # Valid, odd-looking: spaces around fields, an empty (optional) rating, a repeat purchase.
    ratings.add(" i03 , u02 , 4.0 , 1400009000 ", "valid_padded_fields", VALID,
                event=("u02", "i03", 1_400_009_000))  # fmt: skip
    ratings.add("i04,u03,,1400009100", "missing_optional_rating", VALID,
                event=("u03", "i04", 1_400_009_100))  # fmt: skip
    ratings.event("i01", "u01", T0 + 50_000, kind="valid_repeat_purchase")

    bad = [
        # truncated lines (a writer killed mid-line): too few fields, or a cut timestamp
        ("i01,u01,5.0", "truncated_line", "unparseable_line"),
        ("i01,u0", "truncated_line", "unparseable_line"),
        ("i01,u01,5.0,14000", "truncated_line", "bad_timestamp"),
        # lines that are not ratings CSV at all
        ("<html><body>502 Bad Gateway</body></html>", "non_csv_line", "unparseable_line"),
        ('{"asin": "i01", "reviewerID": "u01"}', "non_csv_line", "unparseable_line"),
        ("i01,u01,5.0,1400000000,extra", "non_csv_line", "unparseable_line"),
        ("x" * 1_000_000, "huge_line", "unparseable_line"),
        # wrong types
        ("i01,u01,abc,1400000000", "wrong_type", "bad_rating"),
        ("i01,u01,NaN,1400000000", "wrong_type", "bad_rating"),
        ("i01,u01,7.5,1400000000", "wrong_type", "bad_rating"),
        ("i01,u01,5.0,yesterday", "wrong_type", "bad_timestamp"),
        ("i01,u01,5.0,now", "wrong_type", "bad_timestamp"),
        ("i01,u01,5.0,tomorrow", "wrong_type", "bad_timestamp"),
        ("i01,u01,5.0,1.4e9", "wrong_type", "bad_timestamp"),
        ("i01,u01,5.0,10:00:00", "wrong_type", "bad_timestamp"),  # Spark: "today 10:00"
        ("i01,u01,5.0,T10:00", "wrong_type", "bad_timestamp"),
        ("i01,u01,5.0,0x5388D480", "wrong_type", "bad_timestamp"),
        # non-UTF-8 bytes (in the user, in the item, in the timestamp)
        (b"i01,u\xff01,5.0,1400000000", "non_utf8", "bad_encoding"),
        (b"caf\xe9,u01,5.0,1400000000", "non_utf8", "bad_encoding"),
        (b"i01,u01,5.0,14\xc300000000", "non_utf8", "bad_encoding"),
        # missing required fields
        (",u01,5.0,1400000000", "missing_field", "missing_field"),
        ("i01,,5.0,1400000000", "missing_field", "missing_field"),
        ("i01,   ,5.0,1400000000", "missing_field", "missing_field"),
        ("i01,u01,5.0,", "missing_field", "missing_field"),
        # negative and absurd timestamps
        ("i01,u01,5.0,-5", "absurd_timestamp", "bad_timestamp"),
        ("i01,u01,5.0,0", "absurd_timestamp", "bad_timestamp"),
        ("i01,u01,5.0,100", "absurd_timestamp", "bad_timestamp"),
        ("i01,u01,5.0,32503680000", "absurd_timestamp", "bad_timestamp"),  # year 3000
        ("i01,u01,5.0,3000-01-01", "absurd_timestamp", "bad_timestamp"),
        (f"i01,u01,5.0,{10**20}", "absurd_timestamp", "bad_timestamp"),
        (f"i01,u01,5.0,{2**63 - 1}", "absurd_timestamp", "bad_timestamp"),
        (f"i01,u01,5.0,{10**40}", "absurd_timestamp", "bad_timestamp"),
        # empty lines
        ("", "empty_line", "empty_line"),
        ("   ", "empty_line", "empty_line"),
        # duplicates of an earlier line (exactly, and after trimming)
        (f"i02,u02,5.0,{T0 + (6 + 1) * 60}", "duplicate_event", "duplicate_event"),
        (f" i02,u02 ,3.0, {T0 + (6 + 1) * 60}", "duplicate_event", "duplicate_event"),
        # events whose item has no usable metadata
        ("nometa,u01,5.0,1400000001", "ratings_without_meta", "unknown_item"),
        ("notext,u01,5.0,1400000002", "item_without_text", "item_without_text"),
        ("blank,u02,5.0,1400000003", "item_without_text", "item_without_text"),
        ("tlist,u01,5.0,1400000004", "item_meta_rejected", "unknown_item"),
        ("trunc,u02,5.0,1400000005", "item_meta_rejected", "unknown_item"),
        ("latin,u03,5.0,1400000006", "item_meta_rejected", "unknown_item"),
    ]
    for raw, kind, reason in bad:
        ratings.add(raw, kind, reason)
    rows = ratings.write()

    # Second ratings file: CRLF line endings, valid events, a cross-file duplicate of the
    # first file (the first file's copy wins: first by file name, then line), and a last
    # line cut without its newline.
    more = _File(d, folder / f"{d}_more (copy).csv", newline=b"\r\n")
    for k, u in enumerate(users):
        more.event("i05", u, T0 + 90_000 + k, kind="valid_crlf_line")
    more.add(f"i01,u01,5.0,{T0}", "duplicate_event", "duplicate_event")
    more.add("i06,u0", "truncated_line", "unparseable_line")
    rows += more.write(final_newline=False)

    meta = _File(d, folder / f"meta_{d}.json")
    meta.add(_meta("i01", "Dead Space 2", category=["Games", "PC"], brand="EA"),
             "valid_item", VALID, item="i01")  # fmt: skip
    meta.add(_meta("i02", "Manic Panic &quot;Goth&quot;", category="Beauty"), "valid_item",
             VALID, item="i02")  # fmt: skip
    meta.add(_meta("i04", "", category=[], brand="OnlyBrand"), "empty_title_with_brand",
             VALID, item="i04")  # fmt: skip
    meta.add(_meta("i05", 1984, category=["Books"]), "numeric_title", VALID, item="i05")
    meta.add(_meta("i06", "word " * (HUGE_TITLE_CHARS // 5), brand="Big"), "huge_title",
             VALID, item="i06")  # fmt: skip
    meta.add(_meta("i_rare", "Rare item"), "valid_item", VALID, item="i_rare")
    meta.add(_meta("unrated", "Nobody rated me"), "meta_without_ratings", VALID, item="unrated")
    bad_meta = [
        ('{"asin": "trunc", "title": "Cut he', "truncated_line", "bad_json"),
        ('{"asin": "trunc2", "title": "x", "brand": "B"', "truncated_line", "bad_json"),
        ("this is not json at all", "non_json_line", "bad_json"),
        ("[1, 2, 3]", "non_json_line", "bad_json"),
        ("null", "non_json_line", "bad_json"),
        ('{"asin": "tail", "title": "x"} trailing words', "non_json_line", "bad_json"),
        # Two objects on one line: Spark parses the first and drops the second unseen, so
        # the whole line is refused (its raw text in quarantine shows both).
        (_meta("two1", "First") + _meta("two2", "Second"), "two_objects_line", "bad_json"),
        (_meta("two3", "First") + " " + _meta("two4", "Second"), "two_objects_line", "bad_json"),
        ("{" + "x" * 1_000_000, "huge_line", "bad_json"),
        (_meta("tlist", ["Part one", "Part two"]), "wrong_type", "bad_field_type"),
        (_meta("tobj", {"en": "Title"}), "wrong_type", "bad_field_type"),
        (_meta(["i07"], "Array asin"), "wrong_type", "bad_field_type"),
        (_meta("blist", "Title", brand=["B1", "B2"]), "wrong_type", "bad_field_type"),
        (b'{"asin": "latin", "title": "Caf\xe9 au lait"}', "non_utf8", "bad_encoding"),
        (b'{"asin": "i\xff9", "title": "x"}', "non_utf8", "bad_encoding"),
        (json.dumps({"title": "no asin"}), "missing_field", "missing_field"),
        (_meta("", "empty asin"), "missing_field", "missing_field"),
        (_meta(None, "null asin"), "missing_field", "missing_field"),
        ("{}", "missing_field", "missing_field"),
        (_meta("notext", ""), "empty_text", "no_text"),
        (_meta("blank", "   ", category=[], brand=""), "empty_text", "no_text"),
        (_meta("i01", "A second copy of i01"), "duplicate_item", "duplicate_item"),
        ("", "empty_line", "empty_line"),
    ]
    for raw, kind, reason in bad_meta:
        meta.add(raw, kind, reason)
    rows += meta.write()

    # A meta file whose name holds a space and Hadoop glob characters: read literally, and
    # named as it is (not URL-encoded) in the quarantine and the report.
    odd = _File(d, folder / f"meta_{d} [2].json")
    odd.add(_meta("i03", "Plain title"), "odd_file_name", VALID, item="i03")
    odd.add('{"asin": "i03x", "title": ', "truncated_line", "bad_json")
    rows += odd.write()
    return rows


def _gen_event(user: object, item: object, ts: object, **extra: object) -> str:
    return json.dumps({"user_id": user, "item_id": item, "timestamp": ts, **extra})


def _generic(folder: Path) -> list[Row]:
    """Generic layout (JSON lines): valid core + the kinds that JSON gives a meaning."""
    d = folder.name
    users = [f"g{k:02d}" for k in range(1, 6)]
    items = ["a", "b", "c", "d", "e"]
    inter = _File(d, folder / "interactions.jsonl")
    ts = T0
    for u in users:
        for i in items:
            inter.add(_gen_event(u, i, ts), "valid_event", VALID, event=(u, i, ts))
            ts += 60
    iso, iso_ts = "2014-05-13T10:00:00Z", 1_399_975_200
    inter.add(_gen_event("g01", "a", iso), "valid_iso_timestamp", VALID, event=("g01", "a", iso_ts))
    inter.add(_gen_event(42, "b", T0 + 5), "valid_numeric_id", VALID, event=("42", "b", T0 + 5))
    inter.add(_gen_event("g04", "e", "2014-05"), "valid_iso_timestamp", VALID,
              event=("g04", "e", 1_398_902_400))  # fmt: skip
    inter.add(_gen_event("g02", "c", str(T0 + 7), rating=None), "missing_optional_rating",
              VALID, event=("g02", "c", T0 + 7))  # fmt: skip
    # A whole number written as a float (pandas does that to integer columns with gaps).
    inter.add(_gen_event("g03", "d", float(T0 + 11)), "whole_float_timestamp", VALID,
              event=("g03", "d", T0 + 11))  # fmt: skip
    bad = [
        ('{"user_id": "g01", "item_id": "a", "timest', "truncated_line", "unparseable_line"),
        ("user_id=g01 item_id=a", "non_json_line", "unparseable_line"),
        (_gen_event("g01", "a", T0) + " trailing", "non_json_line", "unparseable_line"),
        (_gen_event("g01", "a", T0 + 1) + _gen_event("g02", "b", T0 + 2), "two_objects_line",
         "unparseable_line"),  # fmt: skip
        ("[1, 2]", "non_json_line", "unparseable_line"),
        (b'{"user_id": "g\xff1", "item_id": "a", "timestamp": 1400000000}', "non_utf8",
         "bad_encoding"),
        (json.dumps({"item_id": "a", "timestamp": T0}), "missing_field", "missing_field"),
        (_gen_event("g01", None, T0), "missing_field", "missing_field"),
        (json.dumps({"user_id": "g01", "item_id": "a"}), "missing_field", "missing_field"),
        (_gen_event("g01", "a", "yesterday"), "wrong_type", "bad_timestamp"),
        (_gen_event("g01", "a", "now"), "wrong_type", "bad_timestamp"),
        (_gen_event("g01", "a", "12:30:00"), "wrong_type", "bad_timestamp"),
        (_gen_event("g01", "a", T0, rating="abc"), "wrong_type", "bad_rating"),
        (_gen_event({"id": "g01"}, "a", T0), "wrong_type", "bad_field_type"),
        (_gen_event("g01", ["a"], T0), "wrong_type", "bad_field_type"),
        (_gen_event("g01", "a", [T0]), "wrong_type", "bad_field_type"),
        (_gen_event("g01", "a", -5), "absurd_timestamp", "bad_timestamp"),
        (_gen_event("g01", "a", 10**20), "absurd_timestamp", "bad_timestamp"),
        (_gen_event("g01", "a", "3000-01-01T00:00:00Z"), "absurd_timestamp", "bad_timestamp"),
        (_gen_event("g01", "a", T0 + 0.5), "wrong_type", "bad_timestamp"),
        (_gen_event("g01", "a", T0), "duplicate_event", "duplicate_event"),
        ("", "empty_line", "empty_line"),
        (_gen_event("g01", "zz", T0), "ratings_without_meta", "unknown_item"),
    ]  # fmt: skip
    for raw, kind, reason in bad:
        inter.add(raw, kind, reason)
    rows = inter.write()

    meta = _File(d, folder / "items.jsonl")
    for i in items:
        meta.add(json.dumps({"item_id": i, "title": f"Item {i}", "categories": ["X"]}),
                 "valid_item", VALID, item=i)  # fmt: skip
    bad_items = [
        (json.dumps({"item_id": "t", "title": ["x", "y"]}), "wrong_type", "bad_field_type"),
        ('{"item_id": "u", "title": "cut', "truncated_line", "bad_json"),
        (json.dumps({"title": "no id"}), "missing_field", "missing_field"),
        (json.dumps({"item_id": "e", "title": "again"}), "duplicate_item", "duplicate_item"),
    ]
    for raw, kind, reason in bad_items:
        meta.add(raw, kind, reason)
    rows += meta.write()
    return rows


def _generic_csv(folder: Path) -> list[Row]:
    """Generic layout, CSV with a header (RFC 4180): quoted fields holding commas, doubled
    quotes and line breaks (one record over several lines, counted once), rows that stop
    before their optional last columns, and the rows that stay broken."""
    d = folder.name
    users = [f"c{k:02d}" for k in range(1, 6)]
    items = ["p", "q", "r", "s", "t"]
    inter = _File(d, folder / "interactions.csv", header="user_id,item_id,timestamp,rating,note")
    ts = T0
    for u in users:
        for i in items:
            inter.add(f"{u},{i},{ts},4.0,ok", "valid_event", VALID, event=(u, i, ts))
            ts += 60
    good = [
        (f'c01,p,{T0 + 1},5.0,"a note\nover two lines"', "quoted_newline_field",
         ("c01", "p", T0 + 1)),
        (f'c02,q,{T0 + 2},5.0,"three\n""quoted""\nlines, too"', "quoted_newline_field",
         ("c02", "q", T0 + 2)),
        (f"c03,r,{T0 + 3},5.0", "missing_optional_trailing_field", ("c03", "r", T0 + 3)),
        (f"c04,s,{T0 + 4}", "missing_optional_trailing_field", ("c04", "s", T0 + 4)),
        (f'"c05","t","{T0 + 5}",,"quoted, with comma"', "quoted_fields", ("c05", "t", T0 + 5)),
    ]  # fmt: skip
    for raw, kind, event in good:
        inter.add(raw, kind, VALID, event=event, multiline=True)
    bad = [
        ("c01,p", "missing_required_trailing_field", "unparseable_line"),
        (f"c01,p,{T0},5.0,ok,extra", "non_csv_line", "unparseable_line"),
        (f"c01,p,{T0 + 6},abc,ok", "wrong_type", "bad_rating"),
        (f'c01,zz,{T0 + 7},5.0,"note\nwith a break"', "ratings_without_meta", "unknown_item"),
        ("", "empty_line", "empty_line"),
    ]
    for raw, kind, reason in bad:
        inter.add(raw, kind, reason, multiline=True)
    rows = inter.write()

    meta = _File(d, folder / "items.csv", header="item_id,title,categories,brand")
    meta.add('p,"Foo\nBar",Cat,Brand', "quoted_newline_field", VALID, item="p", multiline=True)
    meta.add('q,"Kettle, 1.7 l ""Frost""",Kitchen,Acme', "quoted_fields", VALID, item="q")
    meta.add('r,5" tall vase,Home', "missing_optional_trailing_field", VALID, item="r")
    meta.add("s,Only a title", "missing_optional_trailing_field", VALID, item="s")
    meta.add('t,"A\n\nlong\ntitle",,', "quoted_newline_field", VALID, item="t", multiline=True)
    meta.add('p,"A second\ncopy of p",Cat', "duplicate_item", "duplicate_item", multiline=True)
    meta.add(',"no id",Cat', "missing_field", "missing_field")
    meta.add('u,"a quote never closed,Cat', "unclosed_quote", "unparseable_line")
    return rows + meta.write()


def _all_bad(folder: Path) -> list[Row]:
    """A domain without a single valid event: it still gets (empty) tables and a report.
    Beside its files, a 0-byte ratings file and a 0-byte meta file."""
    d = folder.name
    folder.mkdir(parents=True)
    (folder / f"{d}_empty.csv").write_bytes(b"")
    (folder / f"meta_{d}_empty.json").write_bytes(b"")
    ratings = _File(d, folder / f"{d}.csv")
    ratings.add("i1,u1,5.0,yesterday", "wrong_type", "bad_timestamp")
    ratings.add("i1,u1", "truncated_line", "unparseable_line")
    ratings.add("nometa,u1,5.0,1400000000", "ratings_without_meta", "unknown_item")
    meta = _File(d, folder / f"meta_{d}.json.gz")
    meta.add(_meta("i1", "Only item"), "meta_without_ratings", VALID, item="i1")
    meta.add('{"asin": "i2", "ti', "truncated_line", "bad_json")
    return ratings.write() + meta.write()


def _split_ratings(folder: Path) -> list[Row]:
    """Ratings split over several files the Amazon layout names alike: every one is read."""
    d = folder.name
    rows: list[Row] = []
    parts = [f"{d}.csv", f"{d}_part2.csv.gz", f"{d}_part3.CSV"]
    for part, users in zip(parts, (range(0, 3), range(3, 5), range(5, 6)), strict=True):
        ratings = _File(d, folder / part)
        for u in users:
            for i in range(5):
                ratings.event(f"s{i}", f"su{u}", T0 + 60 * (u * 5 + i), kind="valid_split_file")
        rows += ratings.write()
    meta = _File(d, folder / f"meta_{d}.json")
    for i in range(5):
        meta.add(_meta(f"s{i}", f"Split item {i}"), "valid_item", VALID, item=f"s{i}")
    return rows + meta.write()


# ---------------------------------------------------------------------------------------
# Folder-level cases


def _valid_amazon(folder: Path, n_users: int = 5, n_items: int = 5) -> None:
    """A small valid Amazon-layout domain (the rest of a folder-level case)."""
    ratings = _File(folder.name, folder / f"{folder.name}.csv")
    for u in range(n_users):
        for i in range(n_items):
            ratings.event(f"i{i}", f"u{u}", T0 + 60 * (u * n_items + i))
    ratings.write()
    meta = _File(folder.name, folder / f"meta_{folder.name}.json")
    for i in range(n_items):
        meta.add(_meta(f"i{i}", f"Title {i}"), "valid_item", VALID)
    meta.write()


def _folder_cases(root: Path) -> list[FolderCase]:
    cases = []

    empty = root / "NoFiles"
    empty.mkdir(parents=True)
    cases.append(FolderCase("domain_folder_without_files", ["--raw", str(empty)], 2,
                            (str(empty), "no meta_")))  # fmt: skip

    empty_raw = root / "EmptyRaw"
    (empty_raw / "raw").mkdir(parents=True)
    cases.append(FolderCase("domain_folder_without_files", ["--raw", str(empty_raw)], 2,
                            (str(empty_raw / "raw"), "no meta_")))  # fmt: skip

    only_meta = root / "OnlyMeta"
    _valid_amazon(only_meta)
    (only_meta / "OnlyMeta.csv").unlink()
    cases.append(FolderCase("meta_without_ratings", ["--raw", str(only_meta)], 2,
                            (str(only_meta), "no ratings *.csv")))  # fmt: skip

    only_ratings = root / "OnlyRatings"
    _valid_amazon(only_ratings)
    (only_ratings / "meta_OnlyRatings.json").unlink()
    cases.append(FolderCase("ratings_without_meta", ["--raw", str(only_ratings)], 2,
                            (str(only_ratings), "OnlyRatings.csv", "no meta_")))  # fmt: skip

    truncated = root / "TruncGz"
    _valid_amazon(truncated)
    whole = gzip.compress((truncated / "meta_TruncGz.json").read_bytes() * 50)
    (truncated / "meta_TruncGz.json").unlink()
    (truncated / "meta_TruncGz.json.gz").write_bytes(whole[: len(whole) // 2])
    cases.append(FolderCase("truncated_gzip", ["--raw", str(truncated)], 1,
                            ("meta_TruncGz.json.gz",)))  # fmt: skip

    not_gzip = root / "NotGz"
    _valid_amazon(not_gzip)
    (not_gzip / "meta_NotGz.json.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not gzip data")
    (not_gzip / "meta_NotGz.json").unlink()
    cases.append(FolderCase("corrupt_gzip", ["--raw", str(not_gzip)], 1,
                            ("meta_NotGz.json.gz",)))  # fmt: skip

    a_file = root / "AFile"
    a_file.write_text("i1,u1,5.0,1400000000\n")
    cases.append(FolderCase("raw_path_is_a_file", ["--raw", str(a_file)], 2,
                            (str(a_file), "not a folder")))  # fmt: skip

    stray = root / "StrayFile"
    _valid_amazon(stray)
    (stray / "ratings_backup.txt").write_text("i1,u1,5.0,1400000000\n")
    message = (str(stray), "ratings_backup.txt", "not part of the Amazon layout")
    cases.append(FolderCase("file_outside_the_layout", ["--raw", str(stray)], 2, message))

    # A whole file misread one way: the run fails naming the file and the likely cause,
    # instead of committing an empty domain with exit code 0.
    quoted = root / "Quoted"
    _valid_amazon(quoted)
    ratings = quoted / "Quoted.csv"
    lines = ratings.read_text().splitlines()
    ratings.write_text("".join(",".join(f'"{v}"' for v in ln.split(",")) + "\n" for ln in lines))
    message = ("Quoted/Quoted.csv", "100% of its 25 rows are bad_rating", "likely cause")
    cases.append(FolderCase("whole_file_quoted", ["--raw", str(quoted)], 1, message))

    millis = root / "Millis"
    millis.mkdir()
    pairs = [(u, i) for u in range(5) for i in range(5)]
    events = [(f"u{u}", f"i{i}", (T0 + 60 * (u * 5 + i)) * 1000) for u, i in pairs]
    pq.write_table(
        pa.table({"user_id": [e[0] for e in events], "item_id": [e[1] for e in events],
                  "timestamp": pa.array([e[2] for e in events], pa.int64())}),
        millis / "interactions.parquet",
    )  # fmt: skip
    (millis / "items.jsonl").write_text(
        "".join(json.dumps({"item_id": f"i{i}", "title": f"Item {i}"}) + "\n" for i in range(5))
    )
    message = ("Millis/interactions.parquet", "bad_timestamp", "not unix seconds")
    cases.append(FolderCase("timestamps_in_milliseconds", ["--raw", str(millis)], 1, message))

    # CSV headers that cannot name the columns: the file and the actual problem, one line.
    for kind, header, fragment in (
        ("csv_header_semicolons", "user_id;item_id;timestamp", "separated by ';'"),
        ("csv_header_duplicate_names", "user_id,item_id,item_id,timestamp",
         "['item_id'] more than once"),
        ("csv_header_missing_column", "user_id,item,timestamp", "lacks column(s) ['item_id']"),
    ):  # fmt: skip
        folder = root / kind
        folder.mkdir()
        (folder / "interactions.csv").write_text(header + "\n" + "u1,i1,1400000000\n")
        (folder / "items.csv").write_text("item_id,title\ni1,Title\n")
        message = (str(folder / "interactions.csv"), fragment)
        cases.append(FolderCase(kind, ["--raw", str(folder)], 2, message))

    missing = root / "Missing"
    cases.append(FolderCase("raw_path_missing", ["--raw", str(missing)], 2,
                            (str(missing), "does not exist")))  # fmt: skip
    return cases


# Names that must never become a domain (a path component under the lake). The first ones
# cannot be folder names at all and come from --domains / DAG params; the others are created
# as real folders holding valid data, so only the name can be what is refused.
BAD_NAMES_NOT_FOLDERS = ["../evil", "a/b", "..", ".", "a\x00b", "", "/abs"]
BAD_NAMES_AS_FOLDERS = ["a b", "a\nb", "évil", "-rf", ".hidden", "domain=x", "x" * 129]


def build_corpus(root: Path) -> Corpus:
    """Write every case under ``root``; return the expected outcome of each row."""
    root = Path(root)
    rows_root = root / "rows"
    domains = {
        "Mixed": rows_root / "Mixed",
        "Gen": rows_root / "Gen",
        "GenCsv": rows_root / "GenCsv",
        "AllBad": rows_root / "AllBad",
        "Split": rows_root / "Split",
    }
    rows = _mixed(domains["Mixed"])
    rows += _split_ratings(domains["Split"])
    rows += _generic(domains["Gen"])
    rows += _generic_csv(domains["GenCsv"])
    rows += _all_bad(domains["AllBad"])
    folder_cases = _folder_cases(root / "folders")
    bad_name_folders = {}
    for name in BAD_NAMES_AS_FOLDERS:
        folder = root / "names" / f"case{len(bad_name_folders)}" / name
        _valid_amazon(folder)
        bad_name_folders[name] = folder
    return Corpus(
        root=root,
        domains=domains,
        rows=rows,
        folder_cases=folder_cases,
        bad_names=BAD_NAMES_NOT_FOLDERS + BAD_NAMES_AS_FOLDERS,
        bad_name_folders=bad_name_folders,
    )
