"""Encode throughput: the Spark encode job vs raw SentenceTransformer.encode, same texts.

    .venv/bin/python benchmarks/bench_encode.py [--domain Scientific] [--limit 1000 | --full]
        [--master local[2]] [--batch-size 32] [--arrow-batch 2048] [--partitions N]

Reads the real item texts of a domain in place (../shared/data/<D>/reference/<D>.text),
writes them as a clean version into a temporary lake and measures, in one process:

* spark (warm): the whole `run_encode` job (read, check, dedupe, encode, commit the cache
  file, write the output) on a fresh cache, after one warm-up action that starts every Python
  worker and loads the model in it (worker start + model load are excluded, and printed);
* spark encode-only: the encode action alone inside that job;
* raw: `SentenceTransformer.encode` on the same texts in the driver, same batch size,
  with as many torch threads as Spark has cores (the fair comparison: the same total cores)
  and, for reference, with one thread;
* the cached rerun of the job (nothing encoded).

The goal is spark/raw >= 0.9 on the 2-core machine. The machine is shared: the 1-minute
load average is printed next to each measurement. A --full run appends its figures to
benchmarks/results/encode.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from vqrec.core.encoder import (  # noqa: E402
    DEFAULT_BATCH_SIZE,
    encode_texts,
    load_encoder,
    resolve_model,
)
from vqrec.lake.store import staged_version  # noqa: E402
from vqrec.spark.common import spark_session  # noqa: E402
from vqrec.spark.encode import EncodeConfig, _encode_partition, run_encode  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "encode.jsonl"  # one line per --full run
SHARED_DATA = Path(os.environ.get("VQREC_SHARED_DATA", ROOT.parent / "shared" / "data"))


def read_texts(domain: str) -> list[str]:
    """The item texts of a real domain's reference split (one per item)."""
    path = SHARED_DATA / domain / "reference" / f"{domain}.text"
    if not path.exists():
        raise SystemExit(f"bench_encode: {path} not found (real data absent); nothing to do")
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t", 1)[1].strip() for line in lines if "\t" in line]


def write_clean(lake: Path, domain: str, texts: list[str]) -> None:
    with staged_version(lake, "clean", "bench") as out:
        folder = out / "items" / f"domain={domain}"
        folder.mkdir(parents=True)
        table = pa.table(
            {
                "item_idx": pa.array(range(1, len(texts) + 1), pa.int32()),
                "item_id": pa.array([f"i{i}" for i in range(len(texts))], pa.string()),
                "text": pa.array(texts, pa.string()),
                "text_hash": [hashlib.sha1(t.encode()).hexdigest() for t in texts],
            }
        )
        pq.write_table(table, folder / "part-0.parquet")


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def warm_up(spark, model_id: str, batch_size: int) -> float:
    """Start one Python worker per core and load the model in each (then reused)."""
    cores = spark.sparkContext.defaultParallelism
    t0 = time.perf_counter()
    probe = spark.range(0, 8 * cores, numPartitions=cores).selectExpr(
        "sha1(cast(id as string)) as text_hash", "concat('warm up text ', id) as text"
    )
    probe.mapInPandas(
        _encode_partition(model_id, batch_size),
        "text_hash string, embedding array<float>, norm float",
    ).count()
    return time.perf_counter() - t0


def raw_encode(texts: list[str], threads: int, batch_size: int, model_id: str) -> float:
    import torch

    torch.set_num_threads(threads)
    model = load_encoder(model_id)
    encode_texts(model, texts[:64], batch_size)  # warm (allocations, tokenizer)
    t0 = time.perf_counter()
    encode_texts(model, texts, batch_size)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", default="Scientific")
    parser.add_argument("--limit", type=int, default=1000, help="texts (smoke size)")
    parser.add_argument("--full", action="store_true", help="all texts (also VQREC_FULL=1)")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--arrow-batch", type=int, default=2048)
    parser.add_argument("--partitions", type=int)
    parser.add_argument("--model", help="sentence-transformers folder or name")
    args = parser.parse_args(argv)

    texts = read_texts(args.domain)
    if not (args.full or os.environ.get("VQREC_FULL") == "1"):
        texts = texts[: args.limit]
    n_unique = len(set(texts))
    model_id = resolve_model(args.model)
    spark = spark_session("bench-encode", master=args.master)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.arrow_batch))
    cores = spark.sparkContext.defaultParallelism
    print(
        f"{args.domain}: {len(texts)} texts ({n_unique} distinct), master {args.master} "
        f"({cores} cores), batch {args.batch_size}, arrow batch {args.arrow_batch}"
    )

    with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
        lake = Path(tmp)
        write_clean(lake, args.domain, texts)
        t0 = time.perf_counter()
        load_encoder(model_id)  # the driver reads the model's dimension
        print(f"driver model load      {time.perf_counter() - t0:7.1f} s")
        warm = warm_up(spark, model_id, args.batch_size)
        print(f"warm-up (workers+model) {warm:6.1f} s  ({load()})")

        config = EncodeConfig(
            lake=str(lake),
            version="v1",
            model=args.model,
            batch_size=args.batch_size,
            partitions=args.partitions,
        )
        t0 = time.perf_counter()
        first = run_encode(spark, config)
        job_s = time.perf_counter() - t0
        assert first["encoded"] == n_unique, first
        spark_ips = n_unique / job_s
        encode_ips = n_unique / first["encode_seconds"]
        print(f"spark job (warm)        {job_s:6.1f} s  {spark_ips:7.1f} items/s  ({load()})")
        print(
            f"spark encode action     {first['encode_seconds']:6.1f} s  {encode_ips:7.1f} items/s"
        )

        t0 = time.perf_counter()
        again = run_encode(spark, EncodeConfig(lake=str(lake), version="v2", model=args.model))
        assert again["encoded"] == 0, again
        print(f"spark job, all cached   {time.perf_counter() - t0:6.1f} s  (0 encoded)")

        distinct = list(dict.fromkeys(texts))
        raw_n = raw_encode(distinct, cores, args.batch_size, model_id)
        raw_ips = n_unique / raw_n
        print(f"raw encode, {cores} threads   {raw_n:6.1f} s  {raw_ips:7.1f} items/s  ({load()})")
        raw_1 = raw_encode(distinct, 1, args.batch_size, model_id)
        raw1_ips = n_unique / raw_1
        print(f"raw encode, 1 thread    {raw_1:6.1f} s  {raw1_ips:7.1f} items/s  ({load()})")

    if args.full or os.environ.get("VQREC_FULL") == "1":  # a real measurement: keep it
        record = {
            "domain": args.domain,
            "texts": n_unique,
            "master": args.master,
            "batch_size": args.batch_size,
            "spark_job_s": round(job_s, 1),
            "spark_encode_s": round(first["encode_seconds"], 1),
            "raw_s": {str(cores): round(raw_n, 1), "1": round(raw_1, 1)},
            "ratio_job": round(spark_ips / raw_ips, 3),
            "ratio_encode": round(encode_ips / raw_ips, 3),
            "load_1min": round(os.getloadavg()[0], 2),
            "date": time.strftime("%Y-%m-%d"),
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as f:
            f.write(json.dumps(record) + "\n")
    print(f"ratio spark job / raw ({cores} threads)      {spark_ips / raw_ips:5.2f}  (goal >= 0.9)")
    print(f"ratio spark encode / raw ({cores} threads)   {encode_ips / raw_ips:5.2f}")
    print(f"ratio spark job / ({cores} x raw 1 thread)   {spark_ips / (cores * raw1_ips):5.2f}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
