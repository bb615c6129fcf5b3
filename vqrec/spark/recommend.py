"""Batch recommendations (Spark): each domain's champion, top-k for every user's latest history.

Reads a committed clean version (a user's latest history is the test row's history followed
by its target, as raw item ids through the items table; the user's raw id through the
interactions table) and the registered ``vqrec-<domain>@champion``, resolved once on the
driver so that a promotion in between cannot mix two versions. Writes
``<lake>/recommendations/<v>/domain=<d>/part-00000.parquet``: one row per (user, rank) with
``user_id, rank, item_id, score, strategy, model_version``, sorted by user_id then rank,
committed atomically like every stage.

The model runs inside Spark's Python workers (``mapInPandas``): the driver downloads the
champion's files once into the staged version (on the lake, which every executor mounts,
as every stage requires; removed before the commit); each worker loads the pyfunc from
there once and scores Arrow batches of users through the same ``predict`` that
``mlflow models serve`` runs, so a batch answer is the served answer. (Spark's
``addFile`` refuses a folder on a cluster master.)
(``mlflow.pyfunc.spark_udf`` ships a model the same way, but returns one value per input
row, and the (user, rank) rows would need a second pass to explode.)

    vqrec recommend --lake LAKE --version V [--clean-version CV] [--domains A,B] [--k 10]
                    [--no-exclude-seen] [--master local[2]]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from vqrec.lake.store import (
    LakeError,
    default_version,
    lake_root,
    resolve_version,
    staged_version,
    validate_name,
)
from vqrec.spark.common import tidy_spark_output
from vqrec.stages.flags import comma_list

log = logging.getLogger("vqrec.recommend")

OUTPUT_SCHEMA = (
    "user_id string, rank int, item_id string, score double, strategy string, model_version string"
)
MAX_K = 1000  # the served model's limit (vqrec.mlops.pyfunc.MAX_K)


@dataclass(frozen=True)
class RecommendConfig:
    """What one batch-recommendation run reads and writes."""

    lake: str | None = None
    version: str | None = None  # output version; None -> a UTC timestamp
    clean_version: str | None = None  # histories from here; None -> clean's CURRENT
    domains: tuple[str, ...] = ()  # () -> every domain of the clean version
    k: int = 10
    exclude_seen: bool = True  # leave out the items a user already has
    partitions: int | None = None  # scoring tasks; None -> 2 x Spark's default parallelism

    def __post_init__(self) -> None:
        if not 1 <= self.k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, got {self.k}")
        for name in (self.version, self.clean_version):
            if name is not None:
                validate_name(name, "version")
        for domain in self.domains:
            validate_name(domain, "domain")


def latest_histories(spark: SparkSession, clean_dir: Path, domain: str) -> DataFrame:
    """(user_id, history: raw item ids, oldest first) of every user of ``domain``."""
    folder = f"domain={domain}"
    test = spark.read.parquet(str(clean_dir / "sequences" / folder)).where(F.col("split") == "test")
    full = test.select("user_idx", F.concat("history", F.array("target")).alias("items"))
    positions = full.select("user_idx", F.posexplode("items").alias("pos", "item_idx"))
    items = spark.read.parquet(str(clean_dir / "items" / folder)).select("item_idx", "item_id")
    users = spark.read.parquet(str(clean_dir / "interactions" / folder))
    users = users.select("user_idx", "user_id").distinct()
    ordered = (
        positions.join(F.broadcast(items), "item_idx")
        .groupBy("user_idx")
        .agg(F.sort_array(F.collect_list(F.struct("pos", "item_id"))).alias("steps"))
    )
    history = ordered.select("user_idx", F.col("steps.item_id").alias("history"))
    return history.join(users, "user_idx").select("user_id", "history")


_MODELS: dict[str, Any] = {}  # per Python worker (workers are reused): path -> pyfunc model


def _scorer(
    path: str, k: int, exclude_seen: bool, model_version: str
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The mapInPandas function: (user_id, history) batches -> (user, rank) rows."""

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import mlflow

        if path not in _MODELS:
            _MODELS[path] = mlflow.pyfunc.load_model(path)
        model = _MODELS[path]
        for frame in batches:
            request = pd.DataFrame(
                {
                    "history": [list(h) for h in frame["history"]],
                    "k": np.full(len(frame), k, dtype=np.int64),
                    "exclude_seen": np.full(len(frame), exclude_seen),
                }
            )
            out = model.predict(request)
            lengths = out["item_ids"].map(len).to_numpy()
            yield pd.DataFrame(
                {
                    "user_id": np.repeat(frame["user_id"].to_numpy(), lengths),
                    "rank": np.concatenate([np.arange(1, n + 1) for n in lengths] or [[]]),
                    "item_id": np.concatenate([list(x) for x in out["item_ids"]] or [[]]),
                    "score": np.concatenate([list(x) for x in out["scores"]] or [[]]),
                    "strategy": np.repeat(out["strategy"].to_numpy(), lengths),
                    "model_version": model_version,
                }
            ).astype({"rank": "int32", "score": "float64", "item_id": str})

    return score


def _champion_files(lake: Path, domain: str, download_to: Path) -> tuple[Path, str] | None:
    """Download ``vqrec-<domain>@champion`` once: (its local folder, its version), or None."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from vqrec.mlops import registry, tracking

    tracking.setup_tracking(lake)
    name = registry.domain_model_name(domain)
    try:
        mv = registry.champion_version(MlflowClient(), name)
    except registry.NoChampionError as exc:
        log.warning("%s: no batch recommendations: %s", domain, exc)
        return None
    folder = download_to / f"{name}-v{mv.version}"
    mlflow.artifacts.download_artifacts(f"models:/{name}/{mv.version}", dst_path=str(folder))
    return folder, str(mv.version)


def _domains(clean_dir: Path, wanted: tuple[str, ...]) -> list[str]:
    have = sorted(p.name.split("=", 1)[1] for p in (clean_dir / "sequences").glob("domain=*"))
    missing = sorted(set(wanted) - set(have))
    if missing:
        raise LakeError(f"domain(s) {missing} not in clean version {clean_dir.name} (have {have})")
    return list(wanted) or have


def run_recommend(spark: SparkSession, config: RecommendConfig) -> dict[str, Any]:
    """Top-k of every user of each domain by its champion -> ``recommendations/<v>``.

    Returns the summary (also in the version's ``_SUCCESS``): per domain the users, rows,
    model version, seconds and users/s, or why it was skipped (no champion).
    """
    root = lake_root(config.lake)
    version = validate_name(config.version or default_version(), "version")
    clean_dir = resolve_version(root, "clean", config.clean_version)
    domains = _domains(clean_dir, config.domains)
    partitions = config.partitions or 2 * spark.sparkContext.defaultParallelism
    summary: dict[str, Any] = {"clean_version": clean_dir.name, "domains": {}}
    summary["config"] = asdict(config)
    with staged_version(root, "recommendations", version, summary) as out:
        for domain in domains:
            started = time.perf_counter()
            champion = _champion_files(root, domain, out / ".models")
            if champion is None:
                summary["domains"][domain] = {"skipped": "no champion registered"}
                continue
            folder, model_version = champion
            users = latest_histories(spark, clean_dir, domain).repartition(partitions)
            scorer = _scorer(str(folder), config.k, config.exclude_seen, model_version)
            rows = users.mapInPandas(scorer, OUTPUT_SCHEMA)
            target = out / f"domain={domain}"
            rows.repartition(1).sortWithinPartitions("user_id", "rank").write.parquet(str(target))
            written = spark.read.parquet(str(target))
            n_users = written.select("user_id").distinct().count()
            seconds = time.perf_counter() - started
            summary["domains"][domain] = {
                "users": n_users,
                "rows": written.count(),
                "model_version": model_version,
                "seconds": round(seconds, 2),
                "users_per_s": round(n_users / seconds, 1),
            }
            log.info("%s: %s", domain, json.dumps(summary["domains"][domain]))
        shutil.rmtree(out / ".models", ignore_errors=True)  # the downloads, not the output
        tidy_spark_output(out)
    summary["version"] = version
    return summary


def main(argv: list[str] | None = None) -> int:
    """``vqrec recommend``: parse flags, run the job, print the summary as JSON."""
    parser = argparse.ArgumentParser(prog="vqrec recommend", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", help="lake root (default $VQREC_LAKE or ./var/lake)")
    parser.add_argument("--version", help="output version (default: a UTC timestamp)")
    parser.add_argument("--clean-version", help="clean version of the histories (default: CURRENT)")
    parser.add_argument("--domains", type=comma_list, default=(), help="comma-separated (all)")
    parser.add_argument("--k", type=int, default=10, help=f"items per user, 1..{MAX_K} (10)")
    parser.add_argument("--no-exclude-seen", dest="exclude_seen", action="store_false",
                        help="keep items the user already has (default: left out)")  # fmt: skip
    parser.add_argument("--partitions", type=int, help="scoring tasks (default 2 x cores)")
    parser.add_argument("--master", help="Spark master (default $VQREC_SPARK_MASTER/local[2])")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = RecommendConfig(
            lake=args.lake,
            version=args.version,
            clean_version=args.clean_version,
            domains=args.domains,
            k=args.k,
            exclude_seen=args.exclude_seen,
            partitions=args.partitions,
        )
        from vqrec.spark.common import spark_session

        summary = run_recommend(spark_session("vqrec-recommend", master=args.master), config)
    except (LakeError, ValueError) as exc:
        print(f"vqrec recommend: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
