"""Stage 1, clean (Spark): raw multi-domain logs -> clean interactions, splits and items.

    vqrec clean --raw-root ../shared/data --lake var/lake --version v1
    spark-submit jobs/clean.py --raw data/Games data/Beauty --lake var/lake --version v1

Per domain (a folder; its name is the domain id; files found as vqrec/spark/readers.py says):

1. every raw line is parsed in Spark SQL and either accepted or given a ``reason``:
   interactions: bad_encoding, empty_line, unparseable_line, bad_field_type (JSON: a list or
   object where one value belongs), missing_field, bad_rating, bad_timestamp, then
   unknown_item (no metadata line), item_without_text, duplicate_event (same user, item and
   ts as an earlier line; the first by (file, line) is kept);
   items: bad_encoding, empty_line, bad_json, bad_field_type (asin, title or brand is a list
   or object), missing_field, duplicate_item (a later line for the same item id; the first
   wins), no_text (nothing usable after vqrec.spark.text).
2. iterative k-core (users with >= user_k events, then items with >= item_k, until a round
   removes nothing) on the accepted events. Rounds run in Spark while the events are more
   than ``driver_rows``, then on the driver with numpy: the k-core is unique, so both give
   the same result (tests compare them). Events removed here are counted, not quarantined:
   per domain and per ratings file (report ``by_file``)
   ``rows_in = kept + quarantined + kcore_removed`` exactly.
3. dense ids in sorted raw-id order (item_idx 1-based, user_idx 0-based), chronological
   positions (ts, then item_id), and the leave-one-out sequences of docs/ARCHITECTURE.md.

Output: ``<lake>/clean/<version>/`` through vqrec.lake.store.staged_version, tables as
``<table>/domain=<d>/part-00000.parquet`` with rows in a fixed order, so a rerun on the same
input writes byte-identical data files; ``reports/<d>.json`` and ``config.json`` beside them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from vqrec.lake.store import LakeError, lake_root, staged_version, validate_name
from vqrec.spark.common import canonical_parquet
from vqrec.spark.encode import EncodeConfig, run_encode
from vqrec.spark.failures import jvm_log_file, run_job
from vqrec.spark.readers import (
    DomainFiles,
    EventChecks,
    discover,
    read_events,
    read_items,
)
from vqrec.spark.text import DEFAULT_MAX_CHARS, build_text
from vqrec.stages.flags import comma_list

MIN_TS = 631152000  # 1990-01-01 UTC: older "events" are broken clocks, not reviews
DAY = 86400
TABLES = ("items", "users", "interactions", "sequences", "quarantine")


@dataclass
class CleanConfig:
    """Everything the clean stage depends on (saved as config.json in the version)."""

    raw: list[str]  # domain folders
    lake: str | None = None
    version: str | None = None
    domains: list[str] | None = None  # keep only these domain names (None: all)
    layout: str = "auto"  # auto | amazon | generic
    user_k: int = 5
    item_k: int = 5
    max_history: int = 50
    max_text_chars: int = DEFAULT_MAX_CHARS
    collapse_whitespace: bool = False
    column_map: dict[str, str] = field(default_factory=dict)
    min_ts: int = MIN_TS
    max_ts: int | None = None  # None: now + 1 day, fixed when the run starts
    min_rating: float = 0.0
    max_rating: float = 5.0
    driver_rows: int = 5_000_000  # finish the k-core on the driver below this many events
    # A raw file (of at least MIN_ROWS_FOR_SHARE rows) whose rows fail one way at more than
    # this share fails the run, naming the file and the likely cause: a whole domain lost to
    # one misread column must not pass as a clean run. 1.0 turns the check off.
    max_bad_share: float = 0.5
    move_current: bool = True  # False: a one-domain backfill, CURRENT stays where it is

    def validate(self) -> None:
        """Raise ValueError on settings that cannot give the published split."""
        if self.user_k < 3:
            raise ValueError(
                f"user_k={self.user_k}: leave-one-out needs >= 3 events per user "
                "(one train target, one valid, one test)"
            )
        if self.item_k < 1 or self.max_history < 1:
            raise ValueError("item_k and max_history must be >= 1")
        if self.layout not in {"auto", "amazon", "generic"}:
            raise ValueError(f"layout {self.layout!r}: use auto, amazon or generic")
        if not 0.0 < self.max_bad_share <= 1.0:
            raise ValueError(f"max_bad_share={self.max_bad_share}: use a share in (0, 1]")
        if not self.raw:
            raise ValueError("no raw domain folder given")
        if self.version is not None:
            validate_name(self.version, "version")  # refused before Spark starts


def domain_folders(raw: list[str], domains: list[str] | None = None) -> dict[str, Path]:
    """Domain name -> folder, names validated, duplicates refused, optionally filtered."""
    found: dict[str, Path] = {}
    for entry in raw:
        folder = Path(entry).resolve()
        name = validate_name(folder.name, "domain name (the folder's name)")
        if name in found:
            raise ValueError(f"domain {name!r} given twice: {found[name]} and {folder}")
        found[name] = folder
    if domains:
        for name in domains:
            validate_name(name, "domain name in --domains")
        unknown = sorted(set(domains) - set(found))
        if unknown:
            raise ValueError(f"--domains names {unknown} not among the raw folders {sorted(found)}")
        found = {d: found[d] for d in sorted(found) if d in set(domains)}
    return dict(sorted(found.items()))


# ---------------------------------------------------------------------------------------
# Items and events with reasons


def check_items(items: DataFrame, config: CleanConfig) -> DataFrame:
    """Item rows with text, duplicate and no-text reasons added (all raw rows kept)."""
    max_chars, collapse = config.max_text_chars, config.collapse_whitespace

    @F.pandas_udf("string")
    def item_text(title: pd.Series, categories: pd.Series, brand: pd.Series) -> pd.Series:
        # vqrec.spark.text is the single definition of item text; Arrow batches keep this cheap.
        return pd.Series(
            [
                build_text(t, c, b, max_chars=max_chars, collapse_whitespace=collapse)
                for t, c, b in zip(title, categories, brand, strict=True)
            ]
        )

    bad = items.where(F.col("reason").isNotNull()).withColumn("text", F.lit(None).cast("string"))
    good = items.where(F.col("reason").isNull())
    first = Window.partitionBy("domain", "item_id").orderBy("source", "line")
    good = good.withColumn("copy", F.row_number().over(first))
    good = good.withColumn(
        "text", F.when(F.col("copy") == 1, item_text("title", "categories", "brand"))
    )
    good = good.withColumn(
        "reason",
        F.when(F.col("copy") > 1, "duplicate_item").when(F.col("text") == "", "no_text"),
    ).drop("copy")
    return bad.unionByName(good).select(
        "domain", "source", "line", "raw", "reason", "item_id", "text"
    )


def check_events(events: DataFrame, items: DataFrame) -> DataFrame:
    """Event rows with unknown-item, no-text and duplicate reasons added (all rows kept)."""
    status = items.where(F.col("reason").isNull() | (F.col("reason") == "no_text")).select(
        "domain", "item_id", F.col("reason").isNull().alias("has_text")
    )
    events = events.join(status, ["domain", "item_id"], "left")
    events = events.withColumn(
        "reason",
        F.coalesce(
            F.col("reason"),
            F.when(F.col("has_text").isNull(), "unknown_item").when(
                ~F.col("has_text"), "item_without_text"
            ),
        ),
    ).drop("has_text")
    bad = events.where(F.col("reason").isNotNull())
    good = events.where(F.col("reason").isNull())
    first = Window.partitionBy("domain", "user_id", "item_id", "ts").orderBy("source", "line")
    good = good.withColumn(
        "reason", F.when(F.row_number().over(first) > 1, F.lit("duplicate_event"))
    )
    return bad.unionByName(good).select(
        "domain", "source", "line", "raw", "reason", "user_id", "item_id", "ts"
    )


# ---------------------------------------------------------------------------------------
# k-core


def kcore_mask(
    user_codes: np.ndarray, item_codes: np.ndarray, user_k: int, item_k: int
) -> tuple[np.ndarray, int]:
    """Driver-side k-core over integer-coded events: (kept mask, rounds that removed any)."""
    alive = np.ones(len(user_codes), dtype=bool)
    n_users = int(user_codes.max()) + 1 if len(user_codes) else 0
    n_items = int(item_codes.max()) + 1 if len(item_codes) else 0
    rounds = 0
    while True:
        per_user = np.bincount(user_codes[alive], minlength=n_users)
        step = alive & (per_user[user_codes] >= user_k)
        per_item = np.bincount(item_codes[step], minlength=n_items)
        step &= per_item[item_codes] >= item_k
        if step.sum() == alive.sum():
            return alive, rounds
        alive, rounds = step, rounds + 1


def kcore(
    spark: SparkSession, events: DataFrame, user_k: int, item_k: int, driver_rows: int
) -> tuple[DataFrame, int]:
    """Iterative k-core per domain; returns (kept events, rounds that removed something).

    A round keeps users with >= user_k events, then items with >= item_k events; repeated
    until a round removes nothing. Events count with multiplicity (a user who bought an
    item twice at different times has two events).
    """
    keys = ["domain", "user_id", "item_id"]
    current = events.select(*keys)
    n, rounds = current.count(), 0
    while n > driver_rows:
        users = current.groupBy("domain", "user_id").count().where(F.col("count") >= user_k)
        step = current.join(users.drop("count"), ["domain", "user_id"], "left_semi")
        items = step.groupBy("domain", "item_id").count().where(F.col("count") >= item_k)
        step = step.join(items.drop("count"), ["domain", "item_id"], "left_semi")
        step = step.localCheckpoint()  # cut the lineage: each round builds on the last
        m = step.count()
        if m == n:
            break
        current, n, rounds = step, m, rounds + 1
    else:
        # Small now: one Arrow transfer and numpy rounds beat Spark jobs per round.
        pdf = current.toPandas()
        user_codes = pd.factorize(pdf["domain"] + "\x00" + pdf["user_id"])[0]
        item_codes = pd.factorize(pdf["domain"] + "\x00" + pdf["item_id"])[0]
        mask, driver_rounds = kcore_mask(user_codes, item_codes, user_k, item_k)
        rounds += driver_rounds
        kept = pdf[mask]
        current = spark.createDataFrame(
            kept, schema="domain string, user_id string, item_id string"
        )
    users = current.select("domain", "user_id").distinct()
    items = current.select("domain", "item_id").distinct()
    kept_events = events.join(users, ["domain", "user_id"], "left_semi").join(
        items, ["domain", "item_id"], "left_semi"
    )
    return kept_events, rounds


# ---------------------------------------------------------------------------------------
# Ids and leave-one-out sequences


def build_tables(kept: DataFrame, items: DataFrame, max_history: int) -> dict[str, DataFrame]:
    """items, users, interactions, sequences of the kept events (with a ``domain`` column).

    Each frame carries its sort key columns first-class; ``sequences`` keeps a helper ``pos``
    (the target's position) that the writer sorts on and drops.
    """
    per_domain_user = Window.partitionBy("domain").orderBy("user_id")
    users = (
        kept.select("domain", "user_id")
        .distinct()
        .withColumn("user_idx", (F.row_number().over(per_domain_user) - 1).cast("int"))
    )
    per_domain_item = Window.partitionBy("domain").orderBy("item_id")
    texts = items.where(F.col("reason").isNull()).select("domain", "item_id", "text")
    item_table = (
        kept.select("domain", "item_id")
        .distinct()
        .join(texts, ["domain", "item_id"], "inner")
        .withColumn("item_idx", F.row_number().over(per_domain_item).cast("int"))
        .select("domain", "item_idx", "item_id", "text", _sha1("text").alias("text_hash"))
    )
    chrono = Window.partitionBy("domain", "user_idx").orderBy("ts", "item_id")
    interactions = (
        kept.join(users, ["domain", "user_id"])
        .join(item_table.select("domain", "item_id", "item_idx"), ["domain", "item_id"])
        .withColumn("pos", (F.row_number().over(chrono) - 1).cast("int"))
        .select("domain", "user_idx", "item_idx", "user_id", "item_id", "ts", "pos")
    )
    user_window = Window.partitionBy("domain", "user_idx")
    history = user_window.orderBy("pos").rowsBetween(-max_history, -1)
    n = F.count(F.lit(1)).over(user_window)
    sequences = (
        interactions.select(
            "domain",
            "user_idx",
            "pos",
            F.col("item_idx").alias("target"),
            F.collect_list("item_idx").over(history).alias("history"),
            F.when(F.col("pos") == n - 1, "test")
            .when(F.col("pos") == n - 2, "valid")
            .otherwise("train")
            .alias("split"),
        )
        .where(F.col("pos") >= 1)
        .select("domain", "split", "user_idx", "history", "target", "pos")
    )
    return {
        "items": item_table,
        "users": users.select("domain", "user_idx", "user_id"),
        "interactions": interactions,
        "sequences": sequences,
    }


def _sha1(col: str):
    # Spark's sha1 hashes the UTF-8 bytes, exactly what vqrec.spark.text.text_hash does.
    return F.sha1(F.encode(F.col(col), "UTF-8"))


# ---------------------------------------------------------------------------------------
# Deterministic Parquet output

SORT_KEYS = {
    "items": ["item_idx"],
    "users": ["user_idx"],
    "interactions": ["user_idx", "pos"],
    "sequences": ["user_idx", "pos"],
    "quarantine": ["source", "line", "reason", "raw"],
}
DROP_AFTER_SORT = {"sequences": ["pos"]}


def write_table(df: DataFrame, out: Path, name: str, domains: list[str]) -> None:
    """Write ``df`` as ``out/name/domain=<d>/part-00000.parquet``, rows in SORT_KEYS order.

    All rows of a domain go to one task (hash partitioning on ``domain``) and are sorted
    there, so each domain is one file whose bytes depend only on its rows. Spark's part
    names carry a random job id: they are renamed, and its .crc/_SUCCESS side files removed.
    """
    target = out / name
    keys = SORT_KEYS[name]
    frame = df.repartition(max(1, min(len(domains), 16)), "domain").sortWithinPartitions(
        "domain", *keys
    )
    frame = frame.drop(*DROP_AFTER_SORT.get(name, []))
    frame.write.mode("errorifexists").partitionBy("domain").parquet(str(target))
    schema = frame.drop("domain").schema
    for domain in domains:
        folder = target / f"domain={domain}"
        if not folder.is_dir():
            # No rows (e.g. a domain without quarantined rows): still write an empty file, so
            # every domain has every table.
            scratch = target / f".empty-{domain}"
            frame.sparkSession.createDataFrame([], schema).coalesce(1).write.parquet(str(scratch))
            folder.mkdir()
            parts = sorted(scratch.glob("part-*.parquet"))
            shutil.move(str(parts[0]), folder / "part-00000.parquet")
            shutil.rmtree(scratch)
            canonical_parquet(folder / "part-00000.parquet")
            continue
        parts = sorted(folder.glob("part-*.parquet"))
        if len(parts) != 1:
            raise RuntimeError(f"{folder}: expected one part file, Spark wrote {len(parts)}")
        parts[0].rename(folder / "part-00000.parquet")
        canonical_parquet(folder / "part-00000.parquet")
        for side in folder.glob(".*.crc"):
            side.unlink()
    for side in [*target.glob("_SUCCESS"), *target.glob(".*.crc")]:
        side.unlink()


# ---------------------------------------------------------------------------------------
# The stage


def _counts(df: DataFrame, by: list[str]) -> list[dict[str, Any]]:
    return [r.asDict() for r in df.groupBy(*by).count().collect()]


def run_clean(spark: SparkSession, config: CleanConfig) -> dict[str, Any]:
    """Run the clean stage; return ``{"path": version folder, "reports": {domain: report}}``."""
    started = time.time()
    config.validate()
    if config.max_ts is None:
        config.max_ts = int(started) + DAY
    folders = domain_folders(config.raw, config.domains)
    files: dict[str, DomainFiles] = {
        d: discover(folder, d, config.layout, config.column_map) for d, folder in folders.items()
    }
    domains = list(files)
    checks = EventChecks(config.min_ts, config.max_ts, config.min_rating, config.max_rating)

    cached: list[DataFrame] = []
    phases: dict[str, float] = {}
    clock = [time.time()]

    def phase(name: str) -> None:
        # Wall time per phase, for the report and benchmarks/bench_clean.py.
        now = time.time()
        phases[name] = round(now - clock[0], 3)
        clock[0] = now

    def keep(df: DataFrame) -> DataFrame:
        cached.append(df.persist())
        return df

    metadata: dict[str, Any] = {"config": asdict(config)}
    # Everything runs inside the staged version: a failure anywhere (a corrupt gzip that Spark
    # only notices while reading) removes the temp folder and leaves CURRENT untouched.
    try:
        with staged_version(
            config.lake, "clean", config.version, metadata, config.move_current
        ) as out:
            raw_items = _union([read_items(spark, f) for f in files.values()])
            items = keep(check_items(raw_items, config))
            raw_events = _union([read_events(spark, f, checks) for f in files.values()])
            items.count()
            phase("items")
            events = keep(check_events(raw_events, items))
            events.count()
            phase("events")

            # ``source`` rides along through the k-core for the per-file accounting.
            accepted = events.where(F.col("reason").isNull()).drop("reason", "raw", "line")
            kept, rounds = kcore(spark, accepted, config.user_k, config.item_k, config.driver_rows)
            kept = keep(kept)
            kept.count()
            phase("kcore")
            tables = build_tables(kept, items, config.max_history)
            tables = {name: keep(df) for name, df in tables.items()}
            tables["quarantine"] = _quarantine(events, items)
            stats = _stats(events, items, accepted, kept, tables)
            phase("stats")
            problems = mostly_bad_files(stats, config.max_bad_share)
            if problems:
                raise MostlyBadInput("; ".join(problems) + " (nothing committed)")
            for name in TABLES:
                write_table(tables[name], out, name, domains)
                phase(f"write_{name}")
            wall = time.time() - started
            reports = {d: _report(d, files[d], stats, rounds, wall) for d in domains}
            for report in reports.values():
                report["phase_s"] = phases
            (out / "reports").mkdir()
            for d, report in reports.items():
                (out / "reports" / f"{d}.json").write_text(json.dumps(report, indent=2) + "\n")
            (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
            metadata["domains"] = {d: _summary(r) for d, r in reports.items()}
        version = metadata["version"]
        return {
            "path": str(lake_root(config.lake) / "clean" / version),
            "version": version,
            "reports": reports,
        }
    finally:
        for df in cached:
            df.unpersist()


class MostlyBadInput(ValueError):
    """Most rows of a raw file failed one way: the file is misread, not dirty."""


MIN_ROWS_FOR_SHARE = 20
# What usually makes most of a file fail one way (the message's "likely cause").
LIKELY_CAUSE = {
    "bad_rating": "the rating column is not a plain number (quoted fields? columns in "
    "another order?)",
    "bad_timestamp": "timestamps are not unix seconds (milliseconds? fractional? ISO with "
    "another format?)",
    "unparseable_line": "the lines are not in the layout's format (another delimiter? a "
    "header line? a column map missing?)",
    "bad_json": "the lines are not one JSON object each",
    "unknown_item": "the ratings name items the meta files do not hold (the meta of "
    "another domain?)",
    "bad_encoding": "the file is not UTF-8",
    "missing_field": "a required field is absent or empty (a column map missing?)",
    "bad_field_type": "a field holds lists or objects",
    "duplicate_event": "the file repeats rows (the same data twice?)",
}


def mostly_bad_files(stats: dict[str, Any], max_share: float) -> list[str]:
    """One message per raw file (events and items) whose rows failed one way at more than
    ``max_share``: domain, file, share, reason and its likely cause."""
    problems = []
    for table in ("events", "items"):
        totals: dict[tuple[str, str], int] = {}
        for r in stats[table]:
            key = (r["domain"], r["source"])
            totals[key] = totals.get(key, 0) + r["count"]
        for r in stats[table]:
            total = totals[(r["domain"], r["source"])]
            if r["reason"] is None or total < MIN_ROWS_FOR_SHARE:
                continue
            share = r["count"] / total
            if share > max_share:
                cause = LIKELY_CAUSE.get(r["reason"], "see the quarantine table")
                problems.append(
                    f"{r['domain']}/{r['source']}: {share:.0%} of its {total} rows are "
                    f"{r['reason']}; likely cause: {cause}"
                )
    return sorted(problems)


def _quarantine(events: DataFrame, items: DataFrame) -> DataFrame:
    """The refused event and item lines, each with its file, line number, raw text and reason."""
    quarantine = events.where(F.col("reason").isNotNull()).select(
        "domain", "source", "line", "raw", "reason"
    )
    return quarantine.unionByName(
        items.where(F.col("reason").isNotNull()).select("domain", "source", "line", "raw", "reason")
    )


def _stats(
    events: DataFrame,
    items: DataFrame,
    accepted: DataFrame,
    kept: DataFrame,
    tables: dict[str, DataFrame],
) -> dict[str, Any]:
    """The counts the per-domain reports are made of (collected: the Spark jobs run here)."""
    return {
        "events": _counts(events, ["domain", "source", "reason"]),
        "items": _counts(items, ["domain", "source", "reason"]),
        "kept_by_source": _counts(kept, ["domain", "source"]),
        "accepted": accepted.groupBy("domain")
        .agg(
            F.count(F.lit(1)).alias("events"),
            F.countDistinct("user_id").alias("users"),
            F.countDistinct("item_id").alias("items"),
        )
        .collect(),
        "interactions": _counts(tables["interactions"], ["domain"]),
        "users": _counts(tables["users"], ["domain"]),
        "item_table": _counts(tables["items"], ["domain"]),
        "sequences": _counts(tables["sequences"], ["domain", "split"]),
    }


def _union(frames: list[DataFrame]) -> DataFrame:
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def _report(
    domain: str, files: DomainFiles, stats: dict[str, Any], rounds: int, wall: float
) -> dict[str, Any]:
    def pick(rows: list[Any], **match: Any) -> list[Any]:
        return [r for r in rows if all(r[k] == v for k, v in match.items())]

    ev = pick(stats["events"], domain=domain)
    it = pick(stats["items"], domain=domain)
    kept_by_source = pick(stats["kept_by_source"], domain=domain)
    acc = (pick(stats["accepted"], domain=domain) or [{"events": 0, "users": 0, "items": 0}])[0]
    kept = sum(r["count"] for r in pick(stats["interactions"], domain=domain))
    users = sum(r["count"] for r in pick(stats["users"], domain=domain))
    n_items = sum(r["count"] for r in pick(stats["item_table"], domain=domain))
    rows_in = sum(r["count"] for r in ev)
    quarantined: dict[str, int] = {}
    for r in ev:
        if r["reason"] is not None:
            quarantined[r["reason"]] = quarantined.get(r["reason"], 0) + r["count"]
    n_quarantined = sum(quarantined.values())
    kcore_removed = acc["events"] - kept
    splits = {r["split"]: r["count"] for r in pick(stats["sequences"], domain=domain)}
    items_quarantined: dict[str, int] = {}
    for r in it:
        if r["reason"] is not None:
            items_quarantined[r["reason"]] = items_quarantined.get(r["reason"], 0) + r["count"]
    items_ok = sum(r["count"] for r in it if r["reason"] is None)

    def per_file(rows: list[Any], names: list[str]) -> dict[str, dict[str, int]]:
        # Every file of the domain is listed, a 0-byte one with zeros.
        out = {n: {"rows_in": 0, "quarantined": 0} for n in names}
        for r in rows:
            entry = out.setdefault(r["source"], {"rows_in": 0, "quarantined": 0})
            entry["rows_in"] += r["count"]
            entry["quarantined"] += r["count"] if r["reason"] is not None else 0
        return dict(sorted(out.items()))

    # Per ratings file, the same accounting as the domain totals:
    # rows_in = kept + quarantined + kcore_removed.
    event_files = per_file(ev, [p.name for p in files.events])
    for name, entry in event_files.items():
        accepted = entry["rows_in"] - entry["quarantined"]
        entry["kept"] = sum(r["count"] for r in kept_by_source if r["source"] == name)
        entry["kcore_removed"] = accepted - entry["kept"]

    return {
        "domain": domain,
        "layout": files.layout,
        "sources": {
            "interactions": [p.name for p in files.events],
            "items": [p.name for p in files.items],
        },
        "by_file": {
            "interactions": event_files,
            "items": per_file(it, [p.name for p in files.items]),
        },
        "rows_in": rows_in,
        "kept": kept,
        "quarantined": n_quarantined,
        "quarantined_by_reason": dict(sorted(quarantined.items())),
        "kcore_removed": {
            "events": kcore_removed,
            "users": acc["users"] - users,
            "items": acc["items"] - n_items,
            "rounds": rounds,
        },
        "invariant_ok": rows_in == kept + n_quarantined + kcore_removed,
        "users": users,
        "items": n_items,
        "mean_sequence_length": kept / users if users else 0.0,
        "sequences": {s: splits.get(s, 0) for s in ("train", "valid", "test")},
        "item_rows": {
            "rows_in": sum(r["count"] for r in it),
            "items_with_text": items_ok,
            "quarantined_by_reason": dict(sorted(items_quarantined.items())),
            "unused": items_ok - n_items,
        },
        "job_wall_time_s": round(wall, 3),  # the whole clean job, all domains together
    }


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in ("rows_in", "kept", "quarantined", "users", "items")}


# ---------------------------------------------------------------------------------------
# CLI


def _column_map(text: str) -> dict[str, str]:
    mapping = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        canonical, sep, source = pair.partition("=")
        if not sep or not canonical.strip() or not source.strip():
            raise argparse.ArgumentTypeError(f"bad column map entry {pair!r}: use name=column")
        mapping[canonical.strip()] = source.strip()
    return mapping


def parse_args(argv: list[str] | None = None) -> tuple[CleanConfig, str | None, bool]:
    """Flags -> (CleanConfig, Spark master or None, whether to encode afterwards)."""
    p = argparse.ArgumentParser(prog="vqrec clean", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--raw", nargs="+", metavar="DIR", help="domain folders")
    src.add_argument("--raw-root", metavar="ROOT", help="every sub-folder is a domain")
    p.add_argument("--lake", default=None, help="lake root (default $VQREC_LAKE or var/lake)")
    p.add_argument("--version", default=None, help="version name (default: UTC timestamp)")
    p.add_argument(
        "--domains", type=comma_list, default=(), help="comma-separated domain names to keep"
    )
    p.add_argument("--layout", default="auto", choices=["auto", "amazon", "generic"])
    p.add_argument("--user-k", type=int, default=5)
    p.add_argument("--item-k", type=int, default=5)
    p.add_argument("--max-history", type=int, default=50)
    p.add_argument("--max-text-chars", type=int, default=DEFAULT_MAX_CHARS)
    p.add_argument("--collapse-whitespace", action="store_true")
    p.add_argument("--column-map", type=_column_map, default={}, help="user_id=reviewerID,...")
    p.add_argument("--max-ts", type=int, default=None, help="latest valid unix ts (default now+1d)")
    p.add_argument("--max-bad-share", type=float, default=0.5,
                   help="fail when one reason refuses more than this share of a file's rows "
                   "(default 0.5; 1.0: never)")  # fmt: skip
    p.add_argument("--master", default=None, help="Spark master (default local[2])")
    p.add_argument("--no-move-current", dest="move_current", action="store_false",
                   help="commit without moving CURRENT (a one-domain backfill)")  # fmt: skip
    p.add_argument("--encode", action="store_true",
                   help="then encode the committed items in the same Spark application, into "
                   "an embeddings version of the same name (vqrec encode's defaults)")  # fmt: skip
    args = p.parse_args(argv)
    if args.raw_root:
        root = Path(args.raw_root)
        if not root.is_dir():
            p.error(f"--raw-root {root} is not a folder")
        raw = [str(d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    else:
        raw = args.raw
    config = CleanConfig(
        raw=raw,
        lake=args.lake,
        version=args.version,
        domains=list(args.domains) or None,
        layout=args.layout,
        user_k=args.user_k,
        item_k=args.item_k,
        max_history=args.max_history,
        max_text_chars=args.max_text_chars,
        move_current=args.move_current,
        max_bad_share=args.max_bad_share,
        collapse_whitespace=args.collapse_whitespace,
        column_map=args.column_map,
        max_ts=args.max_ts,
    )
    return config, args.master, args.encode


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vqrec clean`` and ``spark-submit jobs/clean.py``.

    Exit 0 (committed), 2 (refused: bad flags, a raw folder unusable as a whole, e.g. a bad
    CSV header), 1 (a file mostly misread, a file Spark cannot read, a full disk): each
    failure is one line on stderr (vqrec.spark.failures.run_job), nothing is committed and
    CURRENT stays where it was. The JVM's own output (log4j, Java stacks) goes to
    ``$VQREC_LOG_DIR/spark-vqrec-clean-<time>-<pid>.log`` (default ``var/logs/`` under the
    working directory), named in the line when Spark failed.

    ``--encode`` runs the encode stage (vqrec.spark.encode.run_encode) on the committed
    version in the same Spark application: one JVM start and warm-up for both stages, which
    is most of a small domain's cost (the new-domain backfill). Should the encode fail, the
    clean version stays committed and a rerun replaces it.
    """
    config, master, encode = parse_args(argv)
    refused: dict[type[BaseException], int] = {MostlyBadInput: 1, ValueError: 2, LakeError: 1}
    code = run_job("vqrec clean", lambda: _validate(config), refused)
    if code:
        return code
    from vqrec.spark.common import spark_session

    owned = SparkSession.getActiveSession() is None
    log_file = jvm_log_file("vqrec-clean") if owned else None
    spark = spark_session("vqrec-clean", master, jvm_log=log_file)
    result: dict[str, Any] = {}

    def job() -> int:
        result.update(run_clean(spark, config))
        if encode:
            result["encode"] = run_encode(
                spark,
                EncodeConfig(
                    lake=config.lake,
                    version=result["version"],
                    clean_version=result["version"],
                    move_current=config.move_current,
                ),
            )
        return 0

    try:
        where = lake_root(config.lake) / "clean"
        code = run_job("vqrec clean", job, refused, where=where, log_file=log_file)
    finally:
        if owned:
            spark.stop()
    if code:
        return code
    wall = 0.0
    for domain, report in result["reports"].items():
        print(json.dumps({"domain": domain, **_summary(report)}))
        wall = report["job_wall_time_s"]
    print(f"committed {result['path']} in {wall:.0f} s")
    if encode:
        summary = result["encode"]
        print(
            f"committed {summary['path']}: {summary['items']} items, {summary['encoded']} "
            f"texts encoded, {summary['reused']} reused from the cache"
        )
    return 0


def _validate(config: CleanConfig) -> int:
    """Flag and folder-name checks that need no Spark (a JVM is not started for nothing)."""
    config.validate()
    domain_folders(config.raw, config.domains)
    return 0


if __name__ == "__main__":
    sys.exit(main())
