"""Shared plumbing for the Spark entry points: one way to get a SparkSession."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import SparkSession

from vqrec.spark import driver_memory


def spark_session(
    app_name: str, master: str | None = None, jvm_log: Path | None = None
) -> SparkSession:
    """A SparkSession configured for this project.

    Under ``spark-submit`` the master comes from the submit command; run directly (tests,
    the CLI) it defaults to ``$VQREC_SPARK_MASTER`` or ``local[2]``. Python workers use this
    interpreter (the venv's), one BLAS/OpenMP thread each: Spark's tasks give the
    parallelism, and nested threading collapses on small machines (README: Troubleshooting).

    ``jvm_log`` (vqrec.spark.failures.jvm_log_file): when this call starts the JVM, its
    stderr (launcher notes, log4j, failed tasks' Java stacks, Python workers' stderr) goes to
    that file instead of the terminal, so a failure reads as the entry point's one line.
    Without it, or when a JVM already runs (tests, spark-submit), nothing is redirected.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master or not os.environ.get("SPARK_ENV_LOADED"):
        # SPARK_ENV_LOADED is set by spark-submit; only then is the master already decided.
        builder = builder.master(master or os.environ.get("VQREC_SPARK_MASTER", "local[2]"))
    conf = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": os.environ.get("VQREC_SHUFFLE_PARTITIONS", "8"),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "2048",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.memory": driver_memory(),
        "spark.executorEnv.OMP_NUM_THREADS": "1",
        "spark.executorEnv.MKL_NUM_THREADS": "1",
        "spark.executorEnv.TOKENIZERS_PARALLELISM": "false",
        "spark.executorEnv.HF_HUB_OFFLINE": "1",
        "spark.python.worker.reuse": "true",
    }
    for key, value in conf.items():
        builder = builder.config(key, value)
    if jvm_log is not None and SparkSession.getActiveSession() is None:
        spark = _with_stderr_to(jvm_log, builder.getOrCreate)
    else:
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("VQREC_SPARK_LOG_LEVEL", "WARN"))
    return spark


def _with_stderr_to(path: Path, start: Callable[[], SparkSession]) -> SparkSession:
    """Run ``start`` with file descriptor 2 pointing at ``path``: the JVM it launches keeps
    that stderr for its whole life; this process gets its own back afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(log, 2)
        return start()
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(log)


def canonical_parquet(path: str | os.PathLike[str]) -> None:
    """Rewrite a Spark-written Parquet file so its bytes depend only on its rows.

    parquet-mr lists each column chunk's encodings from a hash set, in an order that can
    differ from one JVM to the next: two runs over the same input wrote equal tables with
    different footers. Re-writing with pyarrow (row order, schema and key-value metadata kept)
    makes reruns byte-identical, as the lake promises.
    """
    import pyarrow.parquet as pq

    from vqrec.lake.store import atomic_path

    table = pq.read_table(os.fspath(path))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="snappy")


def tidy_spark_output(folder: Path) -> None:
    """Deterministic names: part-NNNNN.parquet per domain folder, no .crc or Spark _SUCCESS."""
    for crc in folder.rglob("*.crc"):
        crc.unlink()
    for marker in folder.rglob("_SUCCESS"):
        marker.unlink()
    for domain_dir in sorted(p for p in folder.glob("domain=*") if p.is_dir()):
        for i, part in enumerate(sorted(domain_dir.glob("part-*.parquet"))):
            part.rename(domain_dir / f"part-{i:05d}.parquet")
            canonical_parquet(domain_dir / f"part-{i:05d}.parquet")
