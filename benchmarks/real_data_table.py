"""Real-data quality table: pre-train on Games + Beauty, transfer to Scientific.

Builds a lake from the published reference splits in ../shared/data (read in place):

* ``clean/reference``: sequences + items of each domain (ids = reference index + 1);
* ``embeddings/reference``: all-MiniLM-L6-v2 embeddings of the reference texts (one
  thread; cached as .npy under ``var/realdata/`` so a re-run does not encode again);
* ``codes/ref-domain`` (the paper's strategy: Scientific gets its own strict quantizer) and
  ``codes/ref-shared`` (Scientific coded by the frozen pre-training quantizer);

then runs, through the same CLI code paths as the pipeline (``vqrec pretrain`` /
``vqrec finetune``, resumable checkpoints), the four-row table of ``vqrec baselines`` and
the ablations (permutation learned / identity / random; code strategy domain / shared).
Every finished row is appended to ``var/realdata/results.jsonl``; ``table`` prints them.

    python benchmarks/real_data_table.py prepare
    nohup python benchmarks/real_data_table.py run > var/logs/real_data.log 2>&1 &
    python benchmarks/real_data_table.py table

Long on 2 CPU cores: ``--pretrain-budget-min`` / ``--row-budget-min`` cap each training
(the epoch that crosses the budget is the last; early stopping usually ends first).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vqrec.data import SPLITS, DomainData, read_reference_domain  # noqa: E402
from vqrec.lake import LakeError, resolve_version, staged_version  # noqa: E402

SHARED = Path(os.environ.get("VQREC_SHARED_DATA", ROOT.parent / "shared" / "data"))
WORK = ROOT / "var" / "realdata"
LAKE = WORK / "lake"
RESULTS = WORK / "results.jsonl"
PRETRAIN = ("Games", "Beauty")
TARGET = "Scientific"
PAPER = {"recall@10": 0.1211, "ndcg@10": 0.0643, "recall@50": 0.2369, "ndcg@50": 0.0897}


def _sequence_table(data: DomainData) -> pa.Table:
    cols: dict[str, list] = {"split": [], "user_idx": [], "history": [], "target": []}
    for split in SPLITS:
        seqs = data.splits[split]
        cols["split"] += [split] * len(seqs)
        cols["user_idx"] += seqs.users.tolist()
        cols["target"] += seqs.targets.tolist()
        cols["history"] += [
            seqs.items[seqs.offsets[r] : seqs.offsets[r + 1]].tolist() for r in range(len(seqs))
        ]
    schema = pa.schema(
        [
            ("split", pa.string()),
            ("user_idx", pa.int32()),
            ("history", pa.list_(pa.int32())),
            ("target", pa.int32()),
        ]
    )
    return pa.table(cols, schema=schema)


def encode(domain: str, texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings of ``texts`` (cached by content under var/realdata)."""
    digest = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:12]
    cache = WORK / f"emb-{domain}-{digest}.npy"
    if cache.exists():
        return np.load(cache)
    from vqrec.encoder import encode_texts, load_encoder

    t0 = time.time()
    model = load_encoder(None)
    emb = encode_texts(model, texts, batch_size=128)
    print(f"encoded {len(texts)} {domain} texts in {time.time() - t0:.0f} s", flush=True)
    np.save(cache, emb)
    return emb


def prepare() -> None:
    """Write clean/embeddings/codes versions of the three reference domains into LAKE."""
    from vqrec.quantize import CodesConfig, run_codes

    WORK.mkdir(parents=True, exist_ok=True)
    domains = {d: read_reference_domain(SHARED / d / "reference", d) for d in PRETRAIN + (TARGET,)}
    if _committed("codes", "ref-domain"):
        return _shared_codes()
    with staged_version(LAKE, "clean", "reference", {"source": str(SHARED)}) as out:
        for name, data in domains.items():
            folder = out / "sequences" / f"domain={name}"
            folder.mkdir(parents=True)
            pq.write_table(_sequence_table(data), folder / "part-0.parquet")
            folder = out / "items" / f"domain={name}"
            folder.mkdir(parents=True)
            texts = data.source["texts"][1:]
            items = pa.table(
                {
                    "item_idx": pa.array(range(1, data.n_items + 1), pa.int32()),
                    "item_id": data.source["item_ids"][1:],
                    "text": texts,
                    "text_hash": [hashlib.sha1(t.encode()).hexdigest() for t in texts],
                }
            )
            pq.write_table(items, folder / "part-0.parquet")
    meta = {"encoder": "all-MiniLM-L6-v2"}
    with staged_version(LAKE, "embeddings", "reference", meta) as out:
        for name, data in domains.items():
            emb = encode(name, data.source["texts"][1:])
            folder = out / "items" / f"domain={name}"
            folder.mkdir(parents=True)
            table = pa.table(
                {
                    "item_idx": pa.array(range(1, data.n_items + 1), pa.int32()),
                    "item_id": data.source["item_ids"][1:],
                    "embedding": pa.array(list(emb), pa.list_(pa.float32())),
                    "norm": pa.array(np.linalg.norm(emb, axis=1), pa.float32()),
                    "encoder": ["all-MiniLM-L6-v2"] * data.n_items,
                }
            )
            pq.write_table(table, folder / "part-0.parquet")
    common = {"lake": str(LAKE), "embeddings_version": "reference", "clean_version": "reference"}
    t0 = time.time()
    summary = run_codes(
        CodesConfig(
            pretrain_domains=PRETRAIN,
            target_domains=(TARGET,),
            strategy="domain",
            version="ref-domain",
            **common,
        )
    )
    print(f"codes ref-domain in {time.time() - t0:.0f} s", json.dumps(summary["stats"])[:400])
    _shared_codes()


def _committed(stage: str, version: str) -> bool:
    try:
        resolve_version(LAKE, stage, version)
        return True
    except LakeError:
        return False


def _shared_codes() -> None:
    """codes/ref-shared: every domain coded by the frozen pre-training quantizer."""
    from vqrec.quantize import CodesConfig, run_codes

    if _committed("codes", "ref-shared"):
        return
    common = {"lake": str(LAKE), "embeddings_version": "reference", "clean_version": "reference"}
    summary = run_codes(
        CodesConfig(
            pretrain_domains=(),
            target_domains=PRETRAIN + (TARGET,),
            strategy="shared",
            version="ref-shared",
            frozen_from="ref-domain",
            **common,
        )
    )
    print("codes ref-shared", json.dumps(summary["stats"])[:400], flush=True)


# ---------------------------------------------------------------------------------- runs

ROWS = {
    # name: (finetune flags, codes version); the first four are the `vqrec baselines` table.
    "ID-only SASRec": (["--mode", "scratch", "--item-encoder", "id"], "ref-domain"),
    "text + linear adaptor": (["--mode", "scratch", "--item-encoder", "text"], "ref-domain"),
    "VQ-Rec from scratch": (["--mode", "scratch"], "ref-domain"),
    "VQ-Rec transfer (learned perm)": (["--mode", "transfer"], "ref-domain"),
    "ablation: transfer, identity perm": (
        ["--mode", "transfer", "--permutation", "identity"],
        "ref-domain",
    ),
    "ablation: transfer, random perm": (
        ["--mode", "transfer", "--permutation", "random"],
        "ref-domain",
    ),
    "ablation: shared codes, identity": (
        ["--mode", "transfer", "--permutation", "identity"],
        "ref-shared",
    ),
    "ablation: shared codes, learned": (["--mode", "transfer"], "ref-shared"),
    "VQ-Rec full fine-tune": (["--mode", "full"], "ref-domain"),
    "check: scratch, plain random batches": (["--mode", "scratch", "--no-bucket"], "ref-domain"),
}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:60]


def _done() -> dict[str, dict]:
    if not RESULTS.exists():
        return {}
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    return {r["row"]: r for r in rows}


def run(args: argparse.Namespace) -> None:
    """Pre-train (resumable), then every row not yet in results.jsonl."""
    from vqrec.train import main_finetune, main_pretrain

    common = ["--lake", str(LAKE), "--clean-version", "reference", "--no-progress"]
    common += ["--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    common += ["--targets", args.targets] + (["--amp"] if args.amp else [])
    backbone = "real-backbone"
    names = [n for n in ROWS if not args.rows or n in args.rows.split(";")]
    needs_backbone = any("scratch" not in ROWS[n][0] for n in names)
    try:
        resolve_version(LAKE, "models", backbone)
    except LakeError:
        if needs_backbone:
            t0 = time.time()
            main_pretrain(
                common
                + ["--version", backbone, "--codes-version", "ref-domain"]
                + ["--domains", ",".join(PRETRAIN), "--resume", "--valid-rows", "2000"]
                + ["--epochs", str(args.pretrain_epochs), "--patience", "5"]
                + ["--time-budget-min", str(args.pretrain_budget_min)]
            )
            print(f"pre-training took {time.time() - t0:.0f} s", flush=True)
    for name in names:
        if name in _done():
            continue
        flags, codes = ROWS[name]
        version = f"real-{_slug(name)}"
        t0 = time.time()
        main_finetune(
            common
            + ["--version", version, "--domain", TARGET, "--codes-version", codes]
            + ["--embeddings-version", "reference", "--backbone-version", backbone]
            + ["--epochs", str(args.epochs), "--resume"]
            + ["--time-budget-min", str(args.row_budget_min)]
            + flags
        )
        folder = resolve_version(LAKE, "models", version) / "domains" / TARGET
        metrics = json.loads((folder / "metrics.json").read_text())
        train_epochs = [h for h in metrics["history"] if h["phase"] == "train"]
        record = {
            "row": name,
            "codes": codes,
            "flags": flags,
            "test": metrics["test"],
            "valid": metrics["valid"],
            "best_epoch": metrics["best_epoch"],
            "epochs": len(train_epochs),
            "seconds": round(time.time() - t0, 1),
            "seq_per_s": float(np.median([h["seq_per_s"] for h in train_epochs])),
            "stopped_by": metrics.get("stopped_by"),
            "targets": args.targets,
            "amp": args.amp,
        }
        with open(RESULTS, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
    table()


def table() -> None:
    """Print the finished rows beside the paper's figures."""
    print(f"{'row':<36} {'R@10':>7} {'N@10':>7} {'R@50':>7} {'N@50':>7}  best/epochs")
    for name, r in _done().items():
        t = r["test"]
        print(
            f"{name:<36} {t['recall@10']:7.4f} {t['ndcg@10']:7.4f} {t['recall@50']:7.4f} "
            f"{t['ndcg@50']:7.4f}  {r['best_epoch']}/{r['epochs']}"
        )
    p = PAPER
    print(
        f"{'paper VQ-Rec (BERT, 5 domains)':<36} {p['recall@10']:7.4f} {p['ndcg@10']:7.4f} "
        f"{p['recall@50']:7.4f} {p['ndcg@50']:7.4f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["prepare", "run", "table"])
    parser.add_argument("--rows", default="", help="';'-separated row names (default: all)")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--pretrain-epochs", type=int, default=300)
    parser.add_argument("--pretrain-budget-min", type=float, default=40.0)
    parser.add_argument("--row-budget-min", type=float, default=10.0)
    parser.add_argument("--targets", default="all", choices=["last", "all"])
    parser.add_argument("--amp", action="store_true", help="bf16 autocast for training")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if args.command == "prepare":
        prepare()
    elif args.command == "run":
        run(args)
    else:
        table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
