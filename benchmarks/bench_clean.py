"""Wall time of the clean stage per real domain (not a test).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_clean.py [Scientific Games Beauty]

Starts one local[2] SparkSession (its start-up is printed apart), then cleans each domain of
../shared/data alone into a temp lake and prints its wall time, the per-phase times and the
counts. Skips domains that are absent.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")

from vqrec.spark.clean import CleanConfig, run_clean  # noqa: E402
from vqrec.spark.common import spark_session  # noqa: E402

DATA = Path(os.environ.get("VQREC_SHARED_DATA", ROOT.parent / "shared" / "data"))


def main(domains: list[str]) -> None:
    started = time.time()
    spark = spark_session("bench-clean", master=os.environ.get("VQREC_SPARK_MASTER", "local[2]"))
    spark.range(1).count()  # pay the JVM warm-up outside the timed runs
    print(f"spark start {time.time() - started:.1f}s", flush=True)
    with tempfile.TemporaryDirectory() as lake:
        for domain in domains:
            if not (DATA / domain / "raw").is_dir():
                print(f"{domain}: absent, skipped")
                continue
            t0 = time.time()
            config = CleanConfig(raw=[str(DATA / domain)], lake=lake, version=domain)
            report = run_clean(spark, config)["reports"][domain]
            wall = time.time() - t0
            counts = {k: report[k] for k in ("rows_in", "kept", "quarantined", "users", "items")}
            print(f"{domain}: {wall:.1f}s {json.dumps(counts)}", flush=True)
            print(f"  phases {json.dumps(report['phase_s'])}", flush=True)
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1:] or ["Scientific", "Games", "Beauty"])
