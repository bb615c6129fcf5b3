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

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from vqrec.core.sequences import Sequences

if TYPE_CHECKING:
    from vqrec.core.model import VQRec

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


def per_user_metric(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Each row's ``recall@k`` (1 for a hit, else 0) or ``ndcg@k`` from its 0-based rank:
    the values :func:`metrics_from_ranks` averages, kept per row for paired comparisons."""
    name, k = metric.split("@")
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks < int(k)
    if name == "recall":
        return hit.astype(np.float64)
    if name == "ndcg":
        return hit / np.log2(ranks + 2)
    raise ValueError(f"unknown metric {metric!r} (recall@k or ndcg@k)")


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Recall@K and NDCG@K (means over rows) from 0-based ranks."""
    out: dict[str, float] = {}
    for k in ks:
        for name in ("recall", "ndcg"):
            values = per_user_metric(ranks, f"{name}@{k}")
            out[f"{name}@{k}"] = float(values.mean()) if len(values) else 0.0
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
