"""Full-ranking evaluation: Recall@K and NDCG@K over every item of a domain.

Protocol (the published VQ-Rec/UniSRec/RecBole one): each row's target is ranked against
all items of its domain (the padding item excluded); items already in the history are
NOT masked. One target per row, so Recall@K is the hit rate and NDCG@K = 1/log2(rank+2).

Rank and ties: ``rank`` (0-based) = number of items with a strictly higher score than the
target + number of items with exactly the same score and a smaller item_idx, i.e. the
target's position in a stable sort by (score descending, item_idx ascending). Ties are
real here: items whose codes collide get identical embeddings, and counting all tied
items as below the target would flatter the model.

Memory: scores are computed for as many rows at once as keep a (rows x catalogue) float
matrix under ``score_budget`` elements (a catalogue of 1M items scores 32 rows at a time),
so the target's own score always comes out of the same matrix as its competitors'.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from vqrec.data import Sequences

if TYPE_CHECKING:
    from vqrec.model import VQRec

KS = (10, 50)


@dataclass
class EvalConfig:
    batch_size: int = 1024  # rows per forward pass (upper bound)
    score_budget: int = 1 << 25  # max elements of one (rows x items) score matrix (128 MB)
    max_len: int = 50
    ks: tuple[int, ...] = KS


def ranks_from_scores(scores: torch.Tensor, targets: torch.LongTensor) -> torch.LongTensor:
    """0-based rank of ``targets`` (column indices) in each row of ``scores`` (tie rule above)."""
    target_score = scores.gather(1, targets[:, None])
    higher = (scores > target_score).sum(1)
    cols = torch.arange(scores.shape[1], device=scores.device)
    tied_before = ((scores == target_score) & (cols[None, :] < targets[:, None])).sum(1)
    return higher + tied_before


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Recall@K and NDCG@K (means over rows) from 0-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"ndcg@{k}"] = float((hit / np.log2(ranks + 2)).mean()) if len(ranks) else 0.0
    return out


@torch.no_grad()
def rank_targets(
    model: VQRec,
    seqs: Sequences,
    item_offset: int = 0,
    n_items: int | None = None,
    config: EvalConfig | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """0-based full-ranking rank of every row's target among the domain's items.

    The domain's items are the model's catalogue rows ``item_offset+1 .. item_offset+n_items``
    (a pre-training model holds several domains in one id space); histories and targets
    in ``seqs`` are local ids 1..n_items.
    """
    config = config or EvalConfig()
    was_training = model.training
    model.eval()
    try:
        table = model.all_item_embeddings()
        n_items = n_items if n_items is not None else table.shape[0] - 1 - item_offset
        items = table[item_offset + 1 : item_offset + 1 + n_items]
        max_len = min(config.max_len, model.config.max_len)  # the model sees at most this
        rows_per_batch = max(1, min(config.batch_size, config.score_budget // max(n_items, 1)))
        out = np.empty(len(seqs), dtype=np.int64)
        # Sorting by length keeps the padding of each batch small; ranks go back in place.
        order = np.argsort(seqs.lengths, kind="stable")
        starts = range(0, len(seqs), rows_per_batch)
        for start in tqdm(starts, desc="evaluate", leave=False, disable=not progress):
            rows = order[start : start + rows_per_batch]
            hist, lengths, targets = seqs.batch(rows, max_len)
            hist = torch.where(hist > 0, hist + item_offset, hist).to(device)
            seq = model.encode(hist, lengths.to(device))
            scores = model.score(seq, items).float()
            out[rows] = ranks_from_scores(scores, (targets - 1).to(device)).cpu().numpy()
        return out
    finally:
        model.train(was_training)


def evaluate(
    model: VQRec,
    seqs: Sequences,
    item_offset: int = 0,
    n_items: int | None = None,
    config: EvalConfig | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, float]:
    """Recall@K / NDCG@K of ``model`` on ``seqs`` (full ranking, see module docstring)."""
    config = config or EvalConfig()
    ranks = rank_targets(model, seqs, item_offset, n_items, config, device, progress)
    return metrics_from_ranks(ranks, config.ks)


def popularity_metrics(
    train: Sequences, seqs: Sequences, n_items: int, ks: tuple[int, ...] = KS
) -> dict[str, float]:
    """The most-popular baseline: every user gets items ranked by training-target count."""
    counts = np.bincount(train.targets - 1, minlength=n_items).astype(np.float64)
    scores = torch.from_numpy(counts)[None, :]
    ranks = []
    for start in range(0, len(seqs), 4096):
        t = torch.from_numpy(seqs.targets[start : start + 4096] - 1)
        ranks.append(ranks_from_scores(scores.expand(len(t), -1), t).numpy())
    return metrics_from_ranks(np.concatenate(ranks) if ranks else np.array([]), ks)


def format_metrics(metrics: dict[str, float]) -> str:
    """``R@10 0.1234  N@10 0.0567 ...`` in the order of the published tables."""
    keys = sorted({int(k.split("@")[1]) for k in metrics if "@" in k})
    parts = []
    for k in keys:
        parts.append(f"R@{k} {metrics.get(f'recall@{k}', math.nan):.4f}")
        parts.append(f"N@{k} {metrics.get(f'ndcg@{k}', math.nan):.4f}")
    return "  ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """`vqrec evaluate`: full-ranking metrics of a fine-tuned domain model on valid/test."""
    from vqrec.data import load_domain
    from vqrec.lake import LakeError, lake_root, resolve_version, validate_name
    from vqrec.train import load_domain_model, pick_device

    parser = argparse.ArgumentParser(prog="vqrec evaluate", description=main.__doc__)
    parser.add_argument("--lake", default=None, help="lake root (default $VQREC_LAKE)")
    parser.add_argument("--models-version", default=None, help="models version (CURRENT)")
    parser.add_argument("--domain", required=True)
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    parser.add_argument("--clean-version", default=None, help="default: the model's own")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=EvalConfig.batch_size)
    args = parser.parse_args(argv)

    try:
        domain = validate_name(args.domain, "domain")
        if args.clean_version:
            validate_name(args.clean_version, "version")
        models_dir = resolve_version(args.lake, "models", args.models_version)
    except (ValueError, LakeError) as err:  # a bad name or version: one line, no traceback
        print(f"vqrec evaluate: error: {err}", file=sys.stderr)
        return 2
    path = models_dir / "domains" / domain
    if not path.is_dir():
        print(f"vqrec evaluate: no model for domain {domain!r} in {models_dir}", file=sys.stderr)
        return 2
    device = pick_device(args.device)
    try:
        model, info = load_domain_model(path, device=device)
    except (ValueError, FileNotFoundError) as err:  # e.g. a file that is not safetensors
        print(f"vqrec evaluate: error: {err}", file=sys.stderr)
        return 2
    clean_version = args.clean_version or info.get("data", {}).get("clean")
    data = load_domain(lake_root(args.lake), domain, clean_version, need_codes=False)
    if data.n_items != model.config.n_items - 1:
        print(
            f"vqrec evaluate: clean version {data.source['clean']} has {data.n_items} items of "
            f"{domain}, the model {model.config.n_items - 1}",
            file=sys.stderr,
        )
        return 2
    config = EvalConfig(batch_size=args.batch_size, max_len=model.config.max_len)
    metrics = evaluate(model, data.splits[args.split], config=config, device=device, progress=True)
    result = {
        "domain": domain,
        "models_version": models_dir.name,
        "clean_version": data.source["clean"],
        "split": args.split,
        "rows": len(data.splits[args.split]),
        "eval_config": asdict(config),
        "metrics": metrics,
    }
    # One whole file, atomically: the committed model folder never shows a partial write.
    out = path / f"evaluation-{args.split}.json"
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(f"{domain} {args.split}: {format_metrics(metrics)}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
