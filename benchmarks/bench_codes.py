"""Benchmark: OPQ fit and code assignment time at a realistic size, one faiss thread.

Encodes nothing itself. The embeddings come from one of:

* ``--source synthetic`` (default): unit-norm vectors drawn around many random topic
  centres, the shape of sentence embeddings of product titles (25k x 384 by default, about
  the Games + Beauty training items);
* ``--source lake``: a committed embeddings version (``--lake``, ``--embeddings-version``,
  ``--domains``), e.g. the real Games + Beauty once the encode stage has run;
* ``--source npy --npy FILE``: a saved (n, d) float32 array.

    .venv/bin/python benchmarks/bench_codes.py                 # 25k x 384, D=32, 8 bits
    .venv/bin/python benchmarks/bench_codes.py --smoke         # 2k x 64, seconds
    .venv/bin/python benchmarks/bench_codes.py --source lake --lake var/lake \\
        --domains Games,Beauty

Prints fit time, assign time (items/s) and the code statistics as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before faiss/numpy load their thread pools

import numpy as np  # noqa: E402

from vqrec.core.quantizer import (  # noqa: E402
    assign_codes,
    code_stats,
    fit_quantizer,
    reconstruction_error,
)
from vqrec.lake.store import resolve_version  # noqa: E402
from vqrec.lake.tables import read_item_embeddings  # noqa: E402


def synthetic_embeddings(n: int, dim: int, topics: int = 400, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``topics`` random centres with per-item noise (not white noise:
    k-means on isotropic Gaussians is a worst case that real text embeddings are not)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, dim)).astype(np.float32)
    sizes = rng.zipf(1.6, topics).astype(np.float64)  # a few big topics, many small ones
    topic = rng.choice(topics, size=n, p=sizes / sizes.sum())
    x = centres[topic] + 0.8 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def load(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    if args.source == "synthetic":
        return synthetic_embeddings(args.n, args.dim, seed=args.seed), "synthetic"
    if args.source == "npy":
        parts = [np.load(f).astype(np.float32) for f in args.npy.split(",")]
        return np.concatenate(parts), f"npy:{args.npy}"
    emb_dir = resolve_version(args.lake, "embeddings", args.embeddings_version)
    parts = [read_item_embeddings(emb_dir, d)[1] for d in args.domains.split(",")]
    return np.concatenate(parts), f"lake:{emb_dir.name}:{args.domains}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", choices=["synthetic", "lake", "npy"], default="synthetic")
    p.add_argument("--n", type=int, default=25_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--npy", default=None, help="comma-separated .npy files, concatenated")
    p.add_argument("--lake", default=None)
    p.add_argument("--embeddings-version", default=None)
    p.add_argument("--domains", default="Games,Beauty")
    p.add_argument("--code-dim", type=int, default=32)
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--niter", type=int, default=None, help="OPQ iterations (faiss default 50)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="2k x 64, D=8, 6 bits, 5 iterations")
    args = p.parse_args(argv)
    if args.smoke:
        args.n, args.dim, args.code_dim, args.bits, args.niter = 2000, 64, 8, 6, 5

    x, source = load(args)
    # Wall and CPU time: on a shared machine the wall time mostly measures the neighbours.
    t0, c0 = time.perf_counter(), time.process_time()
    index = fit_quantizer(x, args.code_dim, args.bits, args.seed, args.niter, threads=args.threads)
    fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    codes = assign_codes(index, x, threads=args.threads)
    assign_s, assign_cpu = time.perf_counter() - t0, time.process_time() - c0
    stats = code_stats(codes, 2**args.bits)
    report = {
        "source": source,
        "n": int(x.shape[0]),
        "dim": int(x.shape[1]),
        "code_dim": args.code_dim,
        "bits": args.bits,
        "niter": args.niter or 50,
        "threads": args.threads,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "fit_seconds": round(fit_s, 2),
        "fit_cpu_seconds": round(fit_cpu, 2),
        "assign_seconds": round(assign_s, 3),
        "assign_cpu_seconds": round(assign_cpu, 3),
        "assign_items_per_second": round(len(x) / assign_s),
        "relative_reconstruction_error": round(reconstruction_error(index, x), 4),
        "unique_code_share": round(stats["unique_code_share"], 4),
        "collision_groups": stats["collision_groups"],
        "mean_entropy_normalized": round(stats["mean_entropy_normalized"], 4),
        "min_used_centroids": stats["min_used_centroids"],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
