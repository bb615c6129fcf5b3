"""Training throughput and peak memory on Scientific-sized data (CPU or CUDA).

Training sequences per second (target rows per second, the optimizer work only, without
validation) and peak RSS of pre-training (contrastive + hard negatives) and fine-tuning
(full softmax over the catalogue, everything trained), at batch 2048 and max length 50,
with length-bucketed and plain random batches. The sequences are the published Scientific
training split (../shared/data, read in place); the codes are uniform random (D=32, M=256):
throughput does not depend on what the codes mean. Each case runs in its own process, so
its peak RSS is its own.

    OMP_NUM_THREADS=1 python benchmarks/bench_train.py [--epochs 2] [--device cpu]

Reference: the official RecBole-based VQ-Rec trains 34,102 Scientific sequences in ~96 s
per epoch (~350 seq/s) at 6.5 GB peak RSS on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VQREC_SHARED_DATA", ROOT.parent / "shared" / "data"))
OFFICIAL_SEQ_PER_S = 350.0


def case(
    mode: str, bucket: bool, targets: str, epochs: int, device: str, batch_size: int, amp: bool
) -> dict:
    """Train ``epochs`` epochs of one case in this process and report its figures."""
    import numpy as np
    import torch

    from vqrec.core.model import ModelConfig
    from vqrec.core.sequences import merge_domains
    from vqrec.core.trainer import TrainConfig, finetune, pretrain
    from vqrec.lake.reference import read_reference_domain

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = read_reference_domain(SHARED / "Scientific" / "reference", "Scientific")
    rng = np.random.default_rng(0)
    data.codes = rng.integers(0, 256, (data.n_items + 1, 32)).astype(np.int64)
    cfg = TrainConfig(
        mode=mode,
        epochs=epochs,
        batch_size=batch_size,
        bucket=bucket,
        targets=targets,
        amp=amp,
        device=device,
        progress=False,
        patience=epochs + 1,
        valid_rows=1,  # pre-training: validation is not what is measured
    )
    t0 = time.perf_counter()
    if mode == "pretrain":
        result = pretrain(merge_domains([data]), cfg, ModelConfig())
    else:
        result = finetune(data, cfg, ModelConfig())
    wall = time.perf_counter() - t0
    history = [h for h in result.metrics["history"] if h["phase"] == "train"]
    rates = [h["seq_per_s"] for h in history]
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {
        "mode": mode,
        "bucket": bucket,
        "targets": targets,
        "amp": amp,
        "device": device,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "train_rows": len(data.splits["train"]),
        "mean_history": float(data.splits["train"].lengths.mean()),
        "epoch_seconds": [round(h["seconds"], 2) for h in history],
        "seq_per_s": rates,
        "seq_per_s_last": rates[-1],
        "peak_rss_gb": peak_kb / 1024**2,
        "wall_s": wall,
    }
    if device.startswith("cuda"):
        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--modes", default="pretrain,finetune")
    parser.add_argument("--buckets", default="1,0")
    parser.add_argument("--targets", default="last,all", help="last: prefix rows; all: chains")
    parser.add_argument("--amp", default="0", help="0, 1 or 0,1 (bf16 autocast)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_train.json"))
    parser.add_argument("--case", default="", help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    if args.case:
        mode, bucket, targets, amp = args.case.split(":")
        res = case(
            mode, bucket == "1", targets, args.epochs, args.device, args.batch_size, amp == "1"
        )
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    if not (SHARED / "Scientific" / "reference").is_dir():
        print(f"real data absent at {SHARED}: nothing to benchmark", file=sys.stderr)
        return 0
    results = []
    cases = [
        (mode, bucket, targets, amp)
        for mode in args.modes.split(",")
        for targets in args.targets.split(",")
        for amp in args.amp.split(",")
        for bucket in args.buckets.split(",")
    ]
    for mode, bucket, targets, amp in cases:
        fine_mode = "pretrain" if mode == "pretrain" else "scratch"
        cmd = [sys.executable, __file__, "--case", f"{fine_mode}:{bucket}:{targets}:{amp}"]
        cmd += ["--epochs", str(args.epochs), "--device", args.device]
        cmd += ["--batch-size", str(args.batch_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            return 1
        res = json.loads(lines[-1][7:])
        results.append(res)
        print(
            f"{mode:<9} targets={targets:<4} amp={amp} bucket={bucket} "
            f"{res['seq_per_s_last']:8.0f} seq/s "
            f"({res['seq_per_s_last'] / OFFICIAL_SEQ_PER_S:5.1f}x official)  "
            f"epoch {res['epoch_seconds'][-1]:6.1f} s  peak RSS {res['peak_rss_gb']:.2f} GB",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
