"""vqrec.core.metrics: full-ranking metrics against a brute-force Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vqrec.core.metrics import (
    metrics_from_ranks,
    per_user_metric,
    popularity_metrics,
    ranks_from_scores,
)
from vqrec.core.sequences import Sequences


def brute_force(scores: list[list[float]], targets: list[int], ks=(10, 50)) -> dict[str, float]:
    """Sort every row by (score desc, item index asc) and read off the target's position."""
    out = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    for row, t in zip(scores, targets, strict=True):
        order = sorted(range(len(row)), key=lambda i: (-row[i], i))
        rank = order.index(t)
        for k in ks:
            if rank < k:
                out[f"recall@{k}"] += 1 / len(targets)
                out[f"ndcg@{k}"] += 1 / math.log2(rank + 2) / len(targets)
    return out


def test_metrics_match_brute_force_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    # Coarse scores so that many items tie with the target.
    scores = torch.randint(0, 8, (64, 120), generator=gen).float()
    targets = torch.randint(0, 120, (64,), generator=gen)
    ranks = ranks_from_scores(scores, targets).numpy()
    got = metrics_from_ranks(ranks, ks=(1, 10, 50))
    want = brute_force(scores.tolist(), targets.tolist(), ks=(1, 10, 50))
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-9, key
    assert 0 < got["recall@10"] < got["recall@50"] < 1


def test_per_user_metric_is_what_the_means_average() -> None:
    ranks = np.array([0, 3, 9, 10, 60])
    assert per_user_metric(ranks, "recall@10").tolist() == [1, 1, 1, 0, 0]
    ndcg = per_user_metric(ranks, "ndcg@10")
    assert ndcg[0] == 1.0 and ndcg[1] == 1 / math.log2(5) and ndcg[3:].tolist() == [0, 0]
    means = metrics_from_ranks(ranks, ks=(10, 50))
    for key, value in means.items():
        assert per_user_metric(ranks, key).mean() == value
    with pytest.raises(ValueError, match="recall@k or ndcg@k"):
        per_user_metric(ranks, "mrr@10")


def test_rank_counts_strictly_higher_and_earlier_ties() -> None:
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.5]])
    assert ranks_from_scores(scores, torch.tensor([2])).tolist() == [2]  # 0.9, then item 0 tied
    assert ranks_from_scores(scores, torch.tensor([0])).tolist() == [1]
    assert ranks_from_scores(scores, torch.tensor([3])).tolist() == [4]


def test_popularity_baseline_ranks_by_training_counts() -> None:
    train = Sequences.from_lists([[1], [1], [2], [1]], [3, 3, 2, 3])
    test = Sequences.from_lists([[1], [2]], [3, 1])
    metrics = popularity_metrics(train, test, n_items=4, ks=(1, 2))
    # item 3 is the most popular (rank 0); item 1 never a target: after 3, 2, tied with 4 -> 2
    assert metrics["recall@1"] == 0.5 and metrics["recall@2"] == 0.5
    assert np.isclose(metrics["ndcg@2"], 0.5)


def test_rank_targets_of_a_real_model_match_brute_force() -> None:
    """The batched, length-sorted ranking equals a per-row Python ranking of the same model."""
    from vqrec.core.metrics import EvalConfig, rank_targets
    from vqrec.core.model import ModelConfig, VQRec

    torch.manual_seed(0)
    config = ModelConfig(code_dim=4, code_cap=8, hidden=16, inner=16, max_len=10)
    model = VQRec(config)
    # Few codes for 60 items: collisions give exact ties, which the tie rule must order.
    codes = torch.randint(0, 3, (61, 4))
    model.set_catalogue(codes=codes)
    gen = np.random.default_rng(0)
    histories = [list(gen.integers(1, 61, gen.integers(1, 14))) for _ in range(40)]
    seqs = Sequences.from_lists(histories, list(gen.integers(1, 61, 40)))
    got = rank_targets(model, seqs, config=EvalConfig(batch_size=7, score_budget=60 * 5))
    model.eval()
    with torch.no_grad():
        items = model.all_item_embeddings()[1:]
        want = []
        for h, t in zip(histories, seqs.targets, strict=True):
            h = h[-10:]
            seq = model.encode(torch.tensor([h]), torch.tensor([len(h)]))
            row = model.score(seq, items)[0].tolist()
            want.append(sorted(range(60), key=lambda i: (-row[i], i)).index(int(t) - 1))
    assert got.tolist() == want
