"""Stage 2, encode (Spark): clean item texts -> sentence embeddings, cached by text hash.

Reads ``<lake>/clean/<cv>/items/domain=<d>/`` and writes ``<lake>/embeddings/<v>/items/
domain=<d>/part-00000.parquet`` (item_idx int32, item_id, text_hash, embedding list<float32>,
norm float32, encoder string), rows sorted by item_idx. ``embedding`` is the encoder's raw
output (all-MiniLM-L6-v2 ends in a Normalize layer, so its norm is 1; other models' is not)
and ``norm`` its L2 norm, so consumers can normalize without recomputing it.

The expensive part, the encoder, runs inside Spark's Python workers through Arrow
(``mapInPandas``): the model is loaded once per worker and each Arrow batch is encoded in one
call with one torch thread. Texts are cached by ``(encoder_key, text_hash)`` under
``<lake>/embedding_cache/<encoder_key>/``: one immutable Parquet file per run that encoded
something, so a nightly run encodes only texts it has never seen.

    vqrec encode --lake LAKE --version V [--clean-version CV] [--domains A,B]
                 [--model PATH_OR_NAME] [--batch-size 32] [--master local[2]]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from vqrec.core.encoder import (
    DEFAULT_BATCH_SIZE,
    dimension_in_key,
    embedding_dimension,
    encode_texts,
    encoder_key,
    load_encoder,
    model_name,
    resolve_model,
)
from vqrec.lake.store import (
    LakeError,
    default_version,
    lake_root,
    resolve_version,
    staged_version,
    validate_name,
)
from vqrec.spark.common import tidy_spark_output
from vqrec.spark.failures import jvm_log_file, run_job
from vqrec.stages.flags import comma_list

log = logging.getLogger("vqrec.encode")

ITEM_COLUMNS = ("item_idx", "item_id", "text", "text_hash")
CACHE_SCHEMA = T.StructType(
    [
        T.StructField("text_hash", T.StringType(), False),
        T.StructField("embedding", T.ArrayType(T.FloatType(), False), False),
        T.StructField("norm", T.FloatType(), False),
    ]
)


@dataclass
class EncodeConfig:
    """What one encode run reads, writes and how it encodes."""

    lake: str | None = None  # lake root; None -> $VQREC_LAKE or ./var/lake
    version: str | None = None  # output version; None -> a UTC timestamp
    clean_version: str | None = None  # None -> clean's CURRENT
    domains: list[str] | None = None  # None -> every domain of the clean version
    model: str | None = None  # sentence-transformers folder or name; None -> bundled MiniLM
    batch_size: int = DEFAULT_BATCH_SIZE  # texts per forward pass inside a worker
    partitions: int | None = None  # encode tasks; None -> 2 x Spark's default parallelism
    extra: dict[str, Any] = field(default_factory=dict)  # stored as-is in _SUCCESS
    move_current: bool = True  # False: a one-domain backfill, CURRENT stays where it is


def _encode_partition(
    model_id: str, batch_size: int
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The mapInPandas function: (text_hash, text) Arrow batches -> (text_hash, embedding, norm).

    A closure over plain strings, so cloudpickle ships it cheaply; the model itself comes from
    vqrec.core.encoder's per-process cache, so a reused Python worker loads it once.
    """

    def encode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = load_encoder(model_id)
        for batch in batches:
            vectors = encode_texts(model, batch["text"].tolist(), batch_size)
            yield pd.DataFrame(
                {
                    "text_hash": batch["text_hash"].to_numpy(),
                    "embedding": list(vectors),
                    "norm": np.linalg.norm(vectors, axis=1).astype(np.float32),
                }
            )

    return encode


def _domain_folders(items_root: Path) -> dict[str, Path]:
    """domain name -> its ``domain=<d>`` folder under a clean version's items/."""
    if not items_root.is_dir():
        raise LakeError(f"{items_root} does not exist: the clean version has no items table")
    found = {}
    for path in sorted(items_root.glob("domain=*")):
        if path.is_dir():
            found[path.name.split("=", 1)[1]] = path
    return found


def _has_parquet(folder: Path) -> bool:
    return any(p.name.endswith(".parquet") for p in folder.iterdir())


def _read_items(spark: SparkSession, items_root: Path, folders: dict[str, Path]) -> DataFrame:
    """The selected domains' items with a ``domain`` column, checked against the contract."""
    paths = [str(p) for p in folders.values() if _has_parquet(p)]
    if not paths:
        schema = "item_idx int, item_id string, text string, text_hash string, domain string"
        return spark.createDataFrame([], schema)
    items = spark.read.option("basePath", str(items_root)).parquet(*paths)
    missing = [c for c in ITEM_COLUMNS if c not in items.columns]
    if missing:
        raise LakeError(f"{items_root}: items table lacks column(s) {missing}")
    return items.select(
        F.col("item_idx").cast("int").alias("item_idx"),
        F.col("item_id").cast("string").alias("item_id"),
        F.col("text").cast("string").alias("text"),
        F.col("text_hash").cast("string").alias("text_hash"),
        F.col("domain").cast("string").alias("domain"),
    )


def _count_and_check_items(items: DataFrame, items_root: Path) -> dict[str, int]:
    """Items per domain, after refusing input that could poison the cache.

    Refused: empty text, a text_hash that is not sha1(text) (the cache would attach a vector
    to the wrong text), a missing or repeated item_idx. clean never writes such rows, so any
    of them means a broken or foreign clean output: fail naming the items, encode nothing.
    """
    is_bad = (
        F.col("text").isNull()
        | (F.trim(F.col("text")) == "")
        | F.col("text_hash").isNull()
        | (F.col("text_hash") != F.sha1(F.col("text")))
        | F.col("item_idx").isNull()
    )
    stats = (
        items.groupBy("domain")
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.count_distinct("item_idx").alias("distinct_idx"),
            F.sum(is_bad.cast("int")).alias("bad"),
        )
        .collect()
    )
    n_bad = sum(int(r["bad"] or 0) for r in stats)
    if n_bad:
        examples = items.filter(is_bad).select("domain", "item_idx", "item_id", "text_hash")
        shown = ", ".join(
            f"{r.domain}/item_idx={r.item_idx} ({r.item_id}, hash {r.text_hash})"
            for r in examples.limit(5).collect()
        )
        raise LakeError(
            f"{items_root}: {n_bad} item(s) with empty text or text_hash != sha1(text), "
            f"e.g. {shown}"
        )
    repeated = [r["domain"] for r in stats if r["distinct_idx"] != r["n"]]
    if repeated:
        raise LakeError(f"{items_root}: repeated item_idx in domain(s) {sorted(repeated)}")
    return {r["domain"]: int(r["n"]) for r in stats}


def _read_cache(spark: SparkSession, cache_dir: Path) -> DataFrame | None:
    """Every cached (text_hash, embedding, norm) of this encoder, one row per hash.

    Two runs racing on the same new text can both cache it; the row from the
    earliest-named file wins, so readers agree on which vector a hash has.
    """
    files = sorted(str(p) for p in cache_dir.glob("*.parquet"))
    if not files:
        return None
    rows = spark.read.schema(CACHE_SCHEMA).parquet(*files)
    return (
        rows.withColumn("_file", F.input_file_name())
        .groupBy("text_hash")
        .agg(F.min_by(F.struct("embedding", "norm"), "_file").alias("v"))
        .select("text_hash", "v.embedding", "v.norm")
    )


def _commit_cache_file(spark_out: Path, cache_dir: Path) -> tuple[Path, int]:
    """Merge Spark's part files into one immutable cache file (temp name, then rename)."""
    parts = sorted(spark_out.glob("part-*.parquet"))
    name = f"{default_version()}-{uuid.uuid4().hex[:8]}.parquet"
    final = cache_dir / name
    tmp = cache_dir / f".{name}.tmp"  # hidden: Spark and the glob above never read it
    rows = 0
    writer = None
    try:
        for part in parts:
            table = pq.read_table(part)
            if table.num_rows == 0:
                continue
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            rows += table.num_rows
        if writer is not None:
            writer.close()
            writer = None
            os.replace(tmp, final)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        shutil.rmtree(spark_out, ignore_errors=True)
    return final, rows


def _wanted_domains(items_root: Path, domains: list[str] | None) -> dict[str, Path]:
    """The item folders of ``domains`` (all when None), in name order; an unknown name is a
    LakeError listing the available ones."""
    available = _domain_folders(items_root)
    if domains:
        wanted = [validate_name(d, "domain") for d in domains]
        unknown = [d for d in wanted if d not in available]
        if unknown:
            raise LakeError(
                f"domain(s) {unknown} not in {items_root} (available: {sorted(available)})"
            )
    else:
        wanted = sorted(available)
    return {d: available[d] for d in sorted(wanted)}


def _texts_to_encode(items: DataFrame, cached: DataFrame | None) -> tuple[DataFrame, int, int]:
    """Distinct texts this run needs, minus those this encoder has already seen (``cached``):
    (those texts, how many distinct texts in all, how many to encode)."""
    unique = items.select("text_hash", "text").dropDuplicates(["text_hash"])
    if cached is None:
        n_unique = unique.count()
        return unique, n_unique, n_unique
    seen = cached.select("text_hash", F.lit(1).alias("_seen"))
    todo = unique.join(seen.drop("_seen"), "text_hash", "left_anti")
    totals = unique.join(seen, "text_hash", "left").agg(
        F.count(F.lit(1)).alias("n"), F.count("_seen").alias("seen")
    )
    row = totals.first()
    return todo, int(row["n"]), int(row["n"]) - int(row["seen"])


def _cached_dimension(cache_root: Path, model_id: str) -> int | None:
    """The output dimension named by this encoder's cache folder in the lake (see
    vqrec.core.encoder.encoder_key), or None when the lake has never cached it."""
    folders = sorted(p for p in cache_root.iterdir() if p.is_dir()) if cache_root.is_dir() else []
    for folder in folders:
        dim = dimension_in_key(folder.name, model_id)
        if dim is not None:
            return dim
    return None


def _encode_texts(
    spark: SparkSession,
    todo: DataFrame,
    n_todo: int,
    model_id: str,
    config: EncodeConfig,
    cache_dir: Path,
) -> tuple[int, str, float]:
    """Encode ``todo`` on the executors into one new cache file of ``cache_dir``:
    (texts encoded, the file's name, seconds spent encoding)."""
    partitions = config.partitions or 2 * spark.sparkContext.defaultParallelism
    partitions = max(1, min(partitions, -(-n_todo // config.batch_size)))
    # Hash-partitioned for balanced tasks, then sorted by length (ties by hash, so batches
    # are the same every run) so each Arrow batch holds texts of similar length.
    vectors = (
        todo.repartition(partitions, "text_hash")
        .sortWithinPartitions(F.length("text"), "text_hash")
        .mapInPandas(_encode_partition(model_id, config.batch_size), CACHE_SCHEMA)
    )
    spark_out = cache_dir / f".tmp-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    try:
        vectors.write.parquet(str(spark_out))
    except BaseException:
        shutil.rmtree(spark_out, ignore_errors=True)  # a failed write leaves no .tmp-* behind
        raise
    encode_seconds = time.perf_counter() - t0
    cache_path, encoded = _commit_cache_file(spark_out, cache_dir)
    return encoded, cache_path.name, encode_seconds


def run_encode(spark: SparkSession, config: EncodeConfig) -> dict[str, Any]:
    """Encode the items of a committed clean version; returns the run's summary.

    The summary (also written into the version's ``_SUCCESS``) holds the encoder key and
    dimension, per-domain item counts, and how many distinct texts were ``encoded`` now vs
    ``reused`` from the cache.
    """
    started = time.perf_counter()
    root = lake_root(config.lake)
    version = validate_name(config.version or default_version(), "version")
    clean_dir = resolve_version(root, "clean", config.clean_version)
    items_root = clean_dir / "items"
    folders = _wanted_domains(items_root, config.domains)

    model_id = resolve_model(config.model)
    cache_root = root / "embedding_cache"
    dim = _cached_dimension(cache_root, model_id)
    if dim is None:
        # The first run of this encoder on this lake: the model tells its dimension (and a
        # broken model fails here, in one line, instead of inside a Spark worker). Later
        # runs read it off the cache folder's name and leave the loading to the workers.
        dim = embedding_dimension(load_encoder(model_id))
    key = encoder_key(model_id, dim)
    cache_dir = cache_root / key
    cache_dir.mkdir(parents=True, exist_ok=True)

    items = _read_items(spark, items_root, folders).cache()
    counts = _count_and_check_items(items, items_root)
    per_domain = {d: counts.get(d, 0) for d in folders}

    cached = _read_cache(spark, cache_dir)
    todo, n_unique, n_todo = _texts_to_encode(items, cached)
    encoded, cache_file, encode_seconds = 0, None, 0.0
    if n_todo:
        encoded, cache_file, encode_seconds = _encode_texts(
            spark, todo, n_todo, model_id, config, cache_dir
        )
        cached = _read_cache(spark, cache_dir)
    reused = n_unique - encoded
    summary: dict[str, Any] = {
        "encoder": key,
        "model": model_name(model_id),
        "model_path": model_id,
        "dimension": dim,
        "version": version,
        "clean_version": clean_dir.name,
        "domains": per_domain,
        "items": sum(per_domain.values()),
        "unique_texts": n_unique,
        "encoded": encoded,
        "reused": reused,
        "cache_file": cache_file,
        "encode_seconds": round(encode_seconds, 3),
        "config": {k: v for k, v in asdict(config).items() if k != "extra"},
        **config.extra,
    }
    with staged_version(root, "embeddings", version, summary, config.move_current) as out:
        _write_embeddings(spark, out, items, cached, key, per_domain)
        summary["seconds"] = round(time.perf_counter() - started, 3)
    items.unpersist()
    summary["path"] = str(root / "embeddings" / version)
    # Once committed: a run that fails says so in one line, without a progress line before it.
    log.info(
        "encode: %d items, %d distinct texts: %d encoded (%.1f s), %d reused from cache %s",
        sum(per_domain.values()),
        n_unique,
        encoded,
        encode_seconds,
        reused,
        key,
    )
    return summary


def _write_embeddings(
    spark: SparkSession,
    out: Path,
    items: DataFrame,
    cached: DataFrame | None,
    key: str,
    per_domain: dict[str, int],
) -> None:
    """``out/items/domain=<d>/part-NNNNN.parquet``: every item with its cached vector, one
    file per domain in item_idx order (an empty domain gets an empty file); a LakeError when
    an item found no vector, so that a version with holes is never committed."""
    rows = items.select("domain", "item_idx", "item_id", "text_hash")
    if cached is not None:
        rows = rows.join(cached, "text_hash", "left")
    else:  # nothing cached and nothing to encode: only empty domains
        rows = rows.withColumn("embedding", F.lit(None).cast("array<float>"))
        rows = rows.withColumn("norm", F.lit(None).cast("float"))
    rows = rows.select(
        "domain",
        "item_idx",
        "item_id",
        "text_hash",
        "embedding",
        "norm",
        F.lit(key).alias("encoder"),
    )
    # One task per domain -> one file per domain, rows in item_idx order.
    (
        rows.repartition(max(1, len(per_domain)), "domain")
        .sortWithinPartitions("domain", "item_idx")
        .write.partitionBy("domain")
        .parquet(str(out / "items"))
    )
    tidy_spark_output(out / "items")
    for domain, n in per_domain.items():
        if n == 0:  # Spark writes no folder for a domain without rows: write it empty
            empty = rows.filter(F.lit(False)).drop("domain").coalesce(1)
            empty.write.parquet(str(out / "items" / f"domain={domain}"))
            tidy_spark_output(out / "items")
            _tidy_empty(out / "items" / f"domain={domain}")
    # Every item must have found its vector; never commit a version with holes.
    written = spark.read.parquet(str(out / "items"))
    n_missing = written.filter(F.col("embedding").isNull()).count()
    if n_missing:
        raise LakeError(f"{n_missing} item(s) got no embedding (embedding cache damaged?)")


def _tidy_empty(folder: Path) -> None:
    for crc in folder.glob("*.crc"):
        crc.unlink()
    (folder / "_SUCCESS").unlink(missing_ok=True)
    for i, part in enumerate(sorted(folder.glob("part-*.parquet"))):
        part.rename(folder / f"part-{i:05d}.parquet")


def main(argv: list[str] | None = None) -> int:
    """``vqrec encode``: parse flags, run the job, print the summary as JSON.

    Exit 0 (committed), 2 (a bad flag, a missing or broken clean version), 1 (Spark failed,
    a full disk): each failure is one line on stderr (vqrec.spark.failures.run_job), with
    nothing committed, CURRENT unchanged and no temp folder left, in the version nor in the
    embedding cache. The JVM's own output (log4j, Java stacks, the Python workers' stderr)
    goes to ``$VQREC_LOG_DIR/spark-vqrec-encode-<time>-<pid>.log`` (default ``var/logs/``
    under the working directory), named in the line when Spark failed.
    """
    parser = argparse.ArgumentParser(prog="vqrec encode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", help="lake root (default $VQREC_LAKE or ./var/lake)")
    parser.add_argument("--version", help="output version (default: a UTC timestamp)")
    parser.add_argument("--clean-version", help="clean version to read (default: CURRENT)")
    parser.add_argument(
        "--domains",
        type=comma_list,
        default=(),
        help="comma-separated domains to encode (default: all)",
    )
    parser.add_argument("--model", help="sentence-transformers folder or name (default MiniLM)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--partitions", type=int, help="encode tasks (default 2 x cores)")
    parser.add_argument("--master", help="Spark master (default $VQREC_SPARK_MASTER/local[2])")
    parser.add_argument("--no-move-current", dest="move_current", action="store_false",
                        help="commit without moving CURRENT (a one-domain backfill)")  # fmt: skip
    args = parser.parse_args(argv)
    # Our own progress lines at INFO; libraries (sentence-transformers, torch) only warn.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)

    from vqrec.spark.common import spark_session

    config = EncodeConfig(
        lake=args.lake,
        version=args.version,
        clean_version=args.clean_version,
        domains=list(args.domains) or None,
        model=args.model,
        batch_size=args.batch_size,
        partitions=args.partitions,
        move_current=args.move_current,
    )
    summary: dict[str, Any] = {}
    refused: dict[type[BaseException], int] = {LakeError: 2, ValueError: 2, RuntimeError: 2}

    def validate() -> int:
        for name in filter(None, [config.version, config.clean_version]):
            validate_name(name, "version")
        for name in config.domains or []:
            validate_name(name, "domain")
        return 0

    # Refused before anything is written (the JVM's log folder too) or a JVM started.
    code = run_job("vqrec encode", validate, refused)
    if code:
        return code
    log_file = jvm_log_file("vqrec-encode") if SparkSession.getActiveSession() is None else None

    def job() -> int:
        spark = spark_session("vqrec-encode", master=args.master, jvm_log=log_file)
        summary.update(run_encode(spark, config))
        return 0

    code = run_job("vqrec encode", job, refused, where=lake_root(config.lake), log_file=log_file)
    if code:
        return code
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
