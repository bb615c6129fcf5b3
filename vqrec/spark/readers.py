"""Raw-layout readers for the clean stage: find a domain's files, parse them line by line.

A domain is a folder whose name is the domain id. Its files are looked for in ``<folder>/raw/``
when that sub-folder exists (the layout of ``../shared/data``), else in ``<folder>/`` itself;
sub-folders other than ``raw/`` are never read. Inside that folder:

* Amazon 2018 layout (``amazon``): interactions = every ``*.csv`` and ``*.csv.gz``
  (``item,user,rating,timestamp``, no header; ``Games.csv``, ``Games_part2.csv.gz`` are
  all read); items = every ``meta_*.json``, ``meta_*.json.gz``, ``meta_*.jsonl(.gz)`` (one
  JSON object per line: ``asin``, ``title``, ``category`` or ``categories``, ``brand``).
  Any other file in the folder is refused by name (hidden files and ``_*`` markers aside).
* generic layout (``generic``): interactions = ``interactions.parquet|.csv|.jsonl|.json``
  (``.gz`` allowed for the text formats; a folder ``interactions.parquet/`` of parts too)
  with ``user_id, item_id, timestamp`` (+ optional ``rating``); items = ``items.<same
  formats>`` with ``item_id, title, categories, brand`` (``description`` and other columns
  are ignored). CSV files have a header line and follow RFC 4180: a quoted field may hold
  commas, doubled quotes and line breaks (such a record is one row, at the line it starts
  on); a row may stop before optional last columns (rating, brand, ...), not before a
  required one; a header with another delimiter, a name twice or empty is refused by name
  (quoted names are fine). A column map (``user_id=reviewerID``) renames
  source columns to these names.
* ``auto``: ``amazon`` when a ``meta_*`` file is present, else ``generic`` when an
  ``interactions.*`` file is present, else a clear error naming the folder.

Every data row keeps ``source`` (file name) and ``line`` (1-based line in the file; 0 for
Parquet, which has no lines), and gets a ``reason`` when it is rejected: nothing is
dropped silently. Text formats are read with ``spark.read.text`` so that each line is seen
raw (bad UTF-8 is detected on the bytes) and parsed in Spark SQL, not in Python.
A JSON line must be one object (``{...}``, nothing after it, not two objects: the line
is refused whole, never half-read), and its id, timestamp, rating,
title and brand must be single values (a string, a number or a boolean): a list or an
object there is ``bad_field_type``. Timestamps are unix seconds: digits only, or an
ISO-8601 date(-time) string that starts with its date (``2014-05-13``,
``2014-05-13T10:00:00Z``; a bare time is refused), or a Parquet
timestamp column. A blank rating is an absent one (ratings are optional, and unused).
"""

from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

RAW_CHARS = 1000  # quarantine keeps the first 1000 characters of a rejected row
TEXT_SUFFIXES = (".csv", ".csv.gz", ".jsonl", ".jsonl.gz", ".json", ".json.gz")
GENERIC_SUFFIXES = (".parquet",) + TEXT_SUFFIXES
EVENT_FIELDS = ("user_id", "item_id", "timestamp", "rating")
ITEM_FIELDS = ("item_id", "title", "categories", "brand")
LIST_FIELDS = ("categories",)  # may hold a list; every other field holds one value


class RawInputError(ValueError):
    """A raw domain folder is unusable as a whole (no files, unknown layout, bad header)."""


@dataclass(frozen=True)
class DomainFiles:
    """The raw files of one domain, as discovered."""

    domain: str
    folder: Path
    layout: str  # "amazon" | "generic"
    events: tuple[Path, ...]
    items: tuple[Path, ...]
    column_map: dict[str, str] = field(default_factory=dict)


def _files_folder(folder: Path) -> Path:
    return folder / "raw" if (folder / "raw").is_dir() else folder


def _generic_files(base: Path, stem: str) -> list[Path]:
    return sorted(
        p
        for p in base.iterdir()
        if any(p.name == stem + suffix for suffix in GENERIC_SUFFIXES)
        and (p.is_file() or p.name.endswith(".parquet"))
    )


RATINGS_SUFFIXES = (".csv", ".csv.gz")  # any case for .csv; gzip must end in ".gz"


def _amazon_ratings(base: Path, metas: list[Path]) -> list[Path]:
    """Every ratings file of an Amazon-layout folder (``*.csv``, ``*.csv.gz``: ``Games.csv``
    and ``Games_part2.csv.gz`` alike). Any other file is refused by name: a file the layout
    does not read would otherwise vanish from the counts without a word."""
    events, unknown = [], []
    for p in sorted(base.iterdir()):
        if p in metas or p.name.startswith((".", "_")) or not p.is_file():
            continue  # hidden files and markers (.DS_Store, _SUCCESS), sub-folders
        name = p.name.lower()
        if name.endswith(".csv") or p.name.endswith(".gz") and name.endswith(".csv.gz"):
            events.append(p)
        else:
            unknown.append(p.name)
    if unknown:
        raise RawInputError(
            f"{base}: file(s) {', '.join(unknown)} are not part of the Amazon layout (ratings "
            "*.csv or *.csv.gz, items meta_*.json(l)(.gz)); move them out or rename them"
        )
    return events


def discover(
    folder: Path, domain: str, layout: str = "auto", column_map: dict[str, str] | None = None
) -> DomainFiles:
    """Find a domain's interaction and item files (rules in the module docstring)."""
    folder = Path(folder)
    if not folder.exists():
        raise RawInputError(f"raw domain folder {folder} does not exist")
    if not folder.is_dir():
        raise RawInputError(f"raw domain {folder} is not a folder (a domain is a folder)")
    base = _files_folder(folder)
    metas = sorted(
        p
        for p in base.iterdir()
        if p.is_file()
        and p.name.startswith("meta_")
        and p.name.endswith((".json", ".json.gz", ".jsonl", ".jsonl.gz"))
    )
    if layout == "auto":
        if metas:
            layout = "amazon"
        elif _generic_files(base, "interactions"):
            layout = "generic"
        elif ratings := sorted(p.name for p in base.iterdir() if p.name.endswith(".csv")):
            raise RawInputError(
                f"{base}: ratings file(s) {', '.join(ratings)} but no meta_*.json(.gz) file "
                "(the Amazon layout needs both; a generic layout needs interactions.*)"
            )
        else:
            raise RawInputError(
                f"{base}: no meta_*.json(.gz) (Amazon layout) and no interactions.* "
                "(generic layout) file; see vqrec/spark/readers.py for the discovery rules"
            )
    if layout == "amazon":
        events = _amazon_ratings(base, metas)
        items = metas
        if not events:
            raise RawInputError(f"{base}: Amazon layout but no ratings *.csv file")
        if not items:
            raise RawInputError(f"{base}: Amazon layout but no meta_*.json(.gz) file")
    elif layout == "generic":
        events = _generic_files(base, "interactions")
        items = _generic_files(base, "items")
        if not events:
            raise RawInputError(f"{base}: generic layout but no interactions.* file")
        if not items:
            raise RawInputError(f"{base}: generic layout but no items.* file")
        for files, what in ((events, "interactions"), (items, "items")):
            if len(files) > 1:
                names = ", ".join(p.name for p in files)
                raise RawInputError(f"{base}: several {what} files ({names}); keep one")
    else:
        raise RawInputError(f"unknown layout {layout!r} (auto, amazon or generic)")
    return DomainFiles(domain, folder, layout, tuple(events), tuple(items), dict(column_map or {}))


# ---------------------------------------------------------------------------------------
# Line-numbered text reading


def spark_path(path: Path) -> str:
    """``path`` as Spark should read it: literally. Spark expands Hadoop glob patterns in
    paths, so a file named "r[1].csv" would not be found and "r*.csv" would read others."""
    return re.sub(r"([\\\[\]{}*?])", r"\\\1", str(path))


def read_lines(spark: SparkSession, paths: list[Path]) -> DataFrame:
    """Lines of text files (gzip allowed) as ``source, line, value, utf8_ok``.

    Spark's text source has no line numbers: within a task, rows of one file block come in
    file order, so ``monotonically_increasing_id`` minus the block's first id is the row
    in the block, and the block's offset is the line count of the earlier blocks of the
    same file. The scan is persisted so the ids are computed once. Each file is its own
    scan with its name as ``source``: Spark's ``_metadata.file_name`` is URL-encoded
    ("a%20b.csv" for "a b.csv").
    """
    scans = [
        spark.read.text(spark_path(p)).select(
            F.lit(p.name).alias("source"),
            F.col("_metadata.file_block_start").alias("block"),
            F.col("value"),
        )
        for p in paths
    ]
    scan = (
        functools.reduce(DataFrame.unionByName, scans)
        .select("source", "block", F.monotonically_increasing_id().alias("mid"), "value")
        .persist()
    )
    blocks = scan.groupBy("source", "block").agg(
        F.min("mid").alias("first_mid"), F.count(F.lit(1)).alias("n")
    )
    by_file = Window.partitionBy("source").orderBy("block")
    blocks = blocks.withColumn("offset", F.sum("n").over(by_file) - F.col("n"))
    return scan.join(F.broadcast(blocks), ["source", "block"]).select(
        "source",
        (F.col("offset") + F.col("mid") - F.col("first_mid") + 1).alias("line"),
        F.expr("make_valid_utf8(value)").alias("value"),
        F.expr("is_valid_utf8(value)").alias("utf8_ok"),
    )


# ---------------------------------------------------------------------------------------
# CSV records: a quoted field may hold line breaks (RFC 4180)

MAX_RECORD_LINES = 100  # a quote left open longer than this is a broken line, not a record
_QUOTED = r'"(?:[^"]|"")*+"'  # a whole quoted field ("" is a quote inside it)
_FIELD = r'(?:"(?:[^"]|"")*+"[^,]*+|[^,"][^,]*+)?'  # quoted, or unquoted (may be empty)
_OPEN_TAIL = r"(?:" + _FIELD + r',)*+"(?:[^"]|"")*+$'  # fields, then a quote still open
# A line that starts outside quotes and ends inside a quoted field:
_OPENS = "^" + _OPEN_TAIL
# A line that starts inside a quoted field and ends inside one (never closes it, or closes
# it and opens another):
_STAYS_OPEN = r'^(?:[^"]|"")*+$|^(?:[^"]|"")*+"[^,]*+,' + _OPEN_TAIL


def csv_records(lines: DataFrame) -> DataFrame:
    """CSV lines (``source, line, value, utf8_ok``) -> records: a record whose quoted field
    holds line breaks is one row, at the line it starts on, its lines joined by "\n"; every
    other line is its own record, its line number unchanged. Adds ``unclosed``: true for
    the lines of a quote still open after MAX_RECORD_LINES lines (or at the end of the file),
    each kept as its own row, so one stray quote cannot swallow a file.

    A quote opens a field only at the field's start (as Spark's CSV parser reads it), so
    ``5" tall`` is text. Whether a line ends inside quotes depends on whether it starts
    inside them: each line is one of four maps of that state (keep it, close it, open it,
    flip it; the regexes above decide which), and a line's state is the last close/open
    before it, flipped once per flip since. Files without a line that opens a quote (almost
    all) skip this: one cheap scan decides.
    """
    opens = F.col("value").rlike(_OPENS)
    if lines.where(opens).limit(1).count() == 0:
        return lines.withColumn("unclosed", F.lit(False))
    stays = F.col("value").rlike(_STAYS_OPEN)
    df = lines.select("*", opens.alias("o_if_c"), stays.alias("o_if_o"))
    flip = F.col("o_if_c") & ~F.col("o_if_o")
    fixed = F.col("o_if_c") == F.col("o_if_o")  # the state after it does not depend on before
    upto = Window.partitionBy("source").orderBy("line").rowsBetween(Window.unboundedPreceding, 0)
    df = df.withColumn("flips", F.sum(flip.cast("int")).over(upto))
    last_fixed = F.max(F.when(fixed, F.struct("line", "o_if_c", "flips"))).over(upto)
    df = df.withColumn("fx", last_fixed)
    base = F.coalesce(F.col("fx.o_if_c"), F.lit(False))
    since = F.col("flips") - F.coalesce(F.col("fx.flips"), F.lit(0))
    df = df.withColumn("ends_open", base != (since % 2 == 1))
    by_line = Window.partitionBy("source").orderBy("line")
    starts = ~F.coalesce(F.lag("ends_open").over(by_line), F.lit(False))
    df = df.withColumn("record", F.sum(starts.cast("int")).over(upto))
    per_record = Window.partitionBy("source", "record")
    n_lines = F.count(F.lit(1)).over(per_record)
    df = df.withColumn("n_lines", n_lines).withColumn(
        "still_open", F.max(F.struct("line", "ends_open")).over(per_record)["ends_open"]
    )
    unclosed = (F.col("n_lines") > MAX_RECORD_LINES) | F.col("still_open")
    # A record that never closes falls back to its lines, each refused on its own.
    key = F.when(unclosed, -F.col("line")).otherwise(F.col("record"))
    parts = F.sort_array(F.collect_list(F.struct("line", "value")))
    return (
        df.withColumn("key", key)
        .withColumn("unclosed", unclosed)
        .groupBy("source", "key")
        .agg(
            F.min("line").alias("line"),
            F.array_join(parts["value"], "\n").alias("value"),
            F.min(F.col("utf8_ok").cast("int")).cast("boolean").alias("utf8_ok"),
            F.max(F.col("unclosed").cast("int")).cast("boolean").alias("unclosed"),
        )
        .select("source", "line", "value", "utf8_ok", "unclosed")
    )


def _raw(col: Column) -> Column:
    return F.substring(col, 1, RAW_CHARS)


def _first_reason(*cases: tuple[Column, str]) -> Column:
    """CASE WHEN c1 THEN r1 WHEN c2 THEN r2 ... END: the first failing check names the row."""
    expr = None
    for cond, reason in cases:
        expr = F.when(cond, reason) if expr is None else expr.when(cond, reason)
    return expr


def _blank(col: Column) -> Column:
    return col.isNull() | (F.trim(col) == "")


def _json_schema(fields: list[str], scalars: list[str]) -> str:
    """DDL for ``from_json``: single-value fields as VARIANT (their JSON type stays visible),
    the others as STRING, plus the corrupt-record column."""
    types = [f"`{f}` {'VARIANT' if f in scalars else 'STRING'}" for f in fields]
    return ", ".join(types) + ", `_corrupt_record` STRING"


def _json_broken(value: Column) -> Column:
    """The line is not exactly one JSON object. Spark reads the first object of
    ``{...} trailing`` or ``{...}{...}`` and ignores the rest, unseen: so the line must
    also start and end with the object's braces and, wrapped in ``[...]``, be an array of
    one value (two objects there are invalid JSON, or two values)."""
    text = F.trim(value)
    values = F.json_array_length(F.concat(F.lit("["), text, F.lit("]")))
    return (
        F.col("p._corrupt_record").isNotNull()
        | ~text.startswith("{")
        | ~text.endswith("}")
        | (F.coalesce(values, F.lit(0)) != 1)
    )


def _json_nested(scalars: list[str]) -> Column:
    """A single-value field holds a list or an object. As STRING, Spark would pass on its
    JSON text ('["a", "b"]'), which would become an id or a title without anyone noticing."""
    nested = F.lit(False)
    for f in scalars:
        nested = nested | F.coalesce(
            F.expr(f"schema_of_variant(p.`{f}`)").rlike("^(ARRAY|OBJECT)"), F.lit(False)
        )
    return nested


def _json_value(field: str) -> Column:
    """A VARIANT field as text: a string as it is, a number or boolean as its JSON text."""
    return F.expr(f"try_variant_get(p.`{field}`, '$', 'string')")


# ---------------------------------------------------------------------------------------
# Interactions


@dataclass(frozen=True)
class EventChecks:
    """Validity bounds for one interaction row."""

    min_ts: int
    max_ts: int
    min_rating: float = 0.0
    max_rating: float = 5.0


def _check_events(df: DataFrame, checks: EventChecks, base_reason: Column) -> DataFrame:
    """Add ``reason`` (null = valid) and typed ``ts`` to rows with string fields."""
    ts_text = F.trim(F.col("timestamp"))
    digits = ts_text.rlike(r"^[0-9]{1,18}$")
    # Only text that starts with a date (year-month[-day]) goes to Spark's parser: it reads a
    # bare time ("10:00:00", "T10:00") as that time today, which would turn a broken field
    # into an event at the run's own date (and a rerun into different output).
    iso_shaped = ts_text.rlike(r"^[0-9]{4}-[0-9]{1,2}(-[0-9]{1,2})?([T ].*)?$")
    iso = F.expr("try_to_timestamp(trim(timestamp))")
    ts = F.when(digits, F.expr("try_cast(trim(timestamp) AS BIGINT)")).when(
        iso_shaped, F.unix_timestamp(iso)
    )
    rating = F.expr("try_cast(trim(rating) AS DOUBLE)")
    has_rating = ~_blank(F.col("rating"))  # "i1,u1,,ts": no rating, not a bad one
    bad_rating = has_rating & (
        rating.isNull()
        | F.isnan(rating)
        | (rating < checks.min_rating)
        | (rating > checks.max_rating)
    )
    reason = F.coalesce(
        base_reason,
        _first_reason(
            (_blank(F.col("user_id")) | _blank(F.col("item_id")), "missing_field"),
            (bad_rating, "bad_rating"),
            (_blank(F.col("timestamp")), "missing_field"),
            (ts.isNull(), "bad_timestamp"),
            ((ts < checks.min_ts) | (ts > checks.max_ts), "bad_timestamp"),
        ),
    )
    return df.select(
        "source",
        "line",
        "raw",
        reason.alias("reason"),
        F.trim("user_id").alias("user_id"),
        F.trim("item_id").alias("item_id"),
        ts.cast("long").alias("ts"),
    )


def amazon_events(spark: SparkSession, files: DomainFiles, checks: EventChecks) -> DataFrame:
    """Ratings CSV lines -> ``source, line, raw, reason, user_id, item_id, ts``."""
    lines = read_lines(spark, list(files.events))
    parts = F.split(F.col("value"), ",", -1)
    base = _first_reason(
        (~F.col("utf8_ok"), "bad_encoding"),
        (F.trim(F.col("value")) == "", "empty_line"),
        (F.size(parts) != 4, "unparseable_line"),
    )
    df = lines.select(
        "source",
        "line",
        _raw(F.col("value")).alias("raw"),
        base.alias("base_reason"),
        F.get(parts, 0).alias("item_id"),
        F.get(parts, 1).alias("user_id"),
        F.get(parts, 2).alias("rating"),
        F.get(parts, 3).alias("timestamp"),
    )
    return _check_events(df, checks, F.col("base_reason"))


def _string_schema(fields: list[str]) -> str:
    names = [f.replace("`", "``") for f in fields]
    return ", ".join(f"`{f}` STRING" for f in names) + ", `_corrupt_record` STRING"


def _text_table(
    spark: SparkSession,
    path: Path,
    source_fields: list[str],
    required: list[str],
    scalars: list[str],
) -> DataFrame:
    """A generic CSV/JSONL file as rows of string fields + ``base_reason`` for broken lines."""
    lines = read_lines(spark, [path])
    name = path.name.removesuffix(".gz")
    available = set(source_fields)
    if name.endswith(".csv"):
        header = _csv_header(spark, path, required)
        available = set(header)
        schema = _string_schema(header)
        # The header is not a data row; a quoted field may span lines (RFC 4180).
        lines = csv_records(lines.where(F.col("line") > 1))
        parsed = F.from_csv(
            F.col("value"),
            schema,
            # RFC 4180: a quote inside a quoted field is written twice (Spark's own default
            # escape is a backslash, which would refuse '"Kettle ""Frost"""').
            {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt_record", "escape": '"'},
        )
        # Fields outside quotes: too many is a broken row; too few only when a required
        # column is among the missing ones (a row may stop before its optional last columns).
        n_fields = F.size(F.split(F.regexp_replace(F.col("value"), _QUOTED, ""), ",", -1))
        needed = max(header.index(f) for f in required) + 1
        broken = (
            F.col("unclosed")
            | (n_fields > len(header))
            | (n_fields < needed)
            | (F.col("p._corrupt_record").isNotNull() & (n_fields == len(header)))
        )
        nested = F.lit(False)  # CSV cells are text: no lists or objects
        values = {f: F.col(f"p.`{f}`") for f in source_fields if f in available}
    else:
        lines = lines.withColumn("unclosed", F.lit(False))
        parsed = F.from_json(
            F.col("value"),
            _json_schema(source_fields, scalars),
            {"columnNameOfCorruptRecord": "_corrupt_record"},
        )
        broken = _json_broken(F.col("value"))
        nested = _json_nested(scalars)
        values = {f: _json_value(f) if f in scalars else F.col(f"p.`{f}`") for f in source_fields}
    reason = _first_reason(
        (~F.col("utf8_ok"), "bad_encoding"),
        (F.trim(F.col("value")) == "", "empty_line"),
        (broken, "unparseable_line"),
        (nested, "bad_field_type"),
    )
    df = lines.select("source", "line", "value", "utf8_ok", "unclosed", parsed.alias("p"))
    df = df.select(
        "source",
        "line",
        _raw(F.col("value")).alias("raw"),
        reason.alias("base_reason"),
        *[values.get(f, F.lit(None).cast("string")).alias(f) for f in source_fields],
    )
    return df


def _csv_header(spark: SparkSession, path: Path, required: list[str]) -> list[str]:
    """The column names of a CSV file's first line, RFC 4180 quoting understood
    (``"user_id","item_id"`` is ``user_id, item_id``); a header that cannot name the
    columns (another delimiter, a name twice or empty, a required column absent) is a
    RawInputError saying which."""
    first = spark.read.text(spark_path(path)).limit(1).collect()
    if not first:
        raise RawInputError(f"{path}: empty CSV file, expected a header line")
    line = first[0].value.removeprefix("\ufeff")  # a byte-order mark is not part of a name
    header = [c.strip() for c in next(csv.reader([line]), [])]
    if len(header) <= 1:
        for delimiter, called in ((";", "';'"), ("\t", "a tab"), ("|", "'|'")):
            if delimiter in line:
                raise RawInputError(
                    f"{path}: the header {line.strip()!r} is separated by {called}; "
                    "CSV files here are comma-separated (RFC 4180)"
                )
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise RawInputError(f"{path}: header names column(s) {repeated} more than once")
    if "" in header:
        raise RawInputError(
            f"{path}: header column {header.index('') + 1} of {len(header)} has no name"
        )
    missing = [f for f in required if f not in header]
    if missing:
        raise RawInputError(
            f"{path}: header {header} lacks column(s) {missing}; "
            "pass --column-map canonical=source to rename"
        )
    return header


def _parquet_table(spark: SparkSession, path: Path, source_fields: list[str]) -> DataFrame:
    """A Parquet file as string fields; line 0 (not line-based), raw = the row as JSON."""
    df = spark.read.parquet(spark_path(path))
    present = {f.name: f.dataType for f in df.schema.fields}
    cols = []
    for f in source_fields:
        dtype = present.get(f)
        if dtype is None:
            cols.append(F.lit(None).cast("string").alias(f))
        elif isinstance(dtype, T.TimestampType | T.TimestampNTZType | T.DateType):
            cols.append(F.unix_timestamp(F.col(f"`{f}`").cast("timestamp")).cast("string").alias(f))
        elif isinstance(dtype, T.ArrayType | T.MapType | T.StructType):
            cols.append(F.to_json(F.col(f"`{f}`")).alias(f))
        else:
            cols.append(F.col(f"`{f}`").cast("string").alias(f))
    return df.select(
        F.lit(path.name).alias("source"),
        F.lit(0).cast("long").alias("line"),
        _raw(F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns]))).alias("raw"),
        F.lit(None).cast("string").alias("base_reason"),
        *cols,
    )


def _generic_table(
    spark: SparkSession,
    path: Path,
    canonical: tuple[str, ...],
    required: tuple[str, ...],
    column_map: dict[str, str],
) -> DataFrame:
    source_fields = [column_map.get(c, c) for c in canonical]
    required_fields = [column_map.get(c, c) for c in required]
    scalars = [column_map.get(c, c) for c in canonical if c not in LIST_FIELDS]
    if path.name.endswith(".parquet"):
        columns = spark.read.parquet(spark_path(path)).columns
        missing = [f for f in required_fields if f not in columns]
        if missing:
            raise RawInputError(
                f"{path}: no column(s) {missing} (has {columns}); "
                "pass --column-map canonical=source to rename"
            )
        df = _parquet_table(spark, path, source_fields)
    else:
        df = _text_table(spark, path, source_fields, required_fields, scalars)
    return df.select(
        "source",
        "line",
        "raw",
        "base_reason",
        *[F.col(f"`{s}`").alias(c) for s, c in zip(source_fields, canonical, strict=True)],
    )


def generic_events(spark: SparkSession, files: DomainFiles, checks: EventChecks) -> DataFrame:
    """Generic interactions -> ``source, line, raw, reason, user_id, item_id, ts``."""
    df = _generic_table(
        spark, files.events[0], EVENT_FIELDS, ("user_id", "item_id", "timestamp"), files.column_map
    )
    return _check_events(df, checks, F.col("base_reason"))


# ---------------------------------------------------------------------------------------
# Items


def _item_rows(df: DataFrame) -> DataFrame:
    reason = F.coalesce(
        F.col("base_reason"), F.when(_blank(F.col("item_id")), F.lit("missing_field"))
    )
    return df.select(
        "source",
        "line",
        "raw",
        reason.alias("reason"),
        F.trim("item_id").alias("item_id"),
        "title",
        "categories",
        "brand",
    )


def amazon_items(spark: SparkSession, files: DomainFiles) -> DataFrame:
    """meta_*.json lines -> ``source, line, raw, reason, item_id, title, categories, brand``."""
    lines = read_lines(spark, list(files.items))
    scalars = ["asin", "title", "brand"]
    schema = _json_schema(["asin", "title", "category", "categories", "brand"], scalars)
    parsed = F.from_json(F.col("value"), schema, {"columnNameOfCorruptRecord": "_corrupt_record"})
    df = lines.select("source", "line", "value", "utf8_ok", parsed.alias("p"))
    base = _first_reason(
        (~F.col("utf8_ok"), "bad_encoding"),
        (F.trim(F.col("value")) == "", "empty_line"),
        (_json_broken(F.col("value")), "bad_json"),
        (_json_nested(scalars), "bad_field_type"),
    )
    df = df.select(
        "source",
        "line",
        _raw(F.col("value")).alias("raw"),
        base.alias("base_reason"),
        _json_value("asin").alias("item_id"),
        _json_value("title").alias("title"),
        F.coalesce(F.col("p.category"), F.col("p.categories")).alias("categories"),
        _json_value("brand").alias("brand"),
    )
    return _item_rows(df)


def generic_items(spark: SparkSession, files: DomainFiles) -> DataFrame:
    """Generic items -> ``source, line, raw, reason, item_id, title, categories, brand``."""
    df = _generic_table(spark, files.items[0], ITEM_FIELDS, ("item_id",), files.column_map)
    df = df.withColumn(
        "base_reason",
        F.when(F.col("base_reason") == "unparseable_line", "bad_json").otherwise(
            F.col("base_reason")
        )
        if files.items[0].name.removesuffix(".gz").endswith((".json", ".jsonl"))
        else F.col("base_reason"),
    )
    return _item_rows(df)


def read_events(spark: SparkSession, files: DomainFiles, checks: EventChecks) -> DataFrame:
    """Interaction rows of one domain, every raw row kept, rejected ones with a reason."""
    reader = amazon_events if files.layout == "amazon" else generic_events
    return reader(spark, files, checks).withColumn("domain", F.lit(files.domain))


def read_items(spark: SparkSession, files: DomainFiles) -> DataFrame:
    """Item metadata rows of one domain, every raw row kept, rejected ones with a reason."""
    reader = amazon_items if files.layout == "amazon" else generic_items
    return reader(spark, files).withColumn("domain", F.lit(files.domain))
