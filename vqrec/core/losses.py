"""Training losses of VQ-Rec: in-batch contrastive pre-training, full-softmax fine-tuning and
its sampled form for large catalogues.

All score with cosine similarity divided by a temperature, as :meth:`VQRec.score`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def corrupt_codes(
    codes: torch.LongTensor,
    rho: float,
    code_cap: int,
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """Semi-synthetic hard negatives: replace each code index with probability ``rho``.

    codes [..., D] raw codes in 0..M-1 (M = ``code_cap``). Each replaced index is drawn
    uniformly from its own block (0..M-1), as the official implementation does; a draw may
    hit the original value (probability 1/M), so the realised change rate is rho*(1-1/M).
    """
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    if code_cap < 1:
        raise ValueError(f"code_cap must be >= 1, got {code_cap}")
    codes = codes.long()
    replace = torch.rand(codes.shape, generator=generator, device=codes.device) < rho
    random_codes = torch.randint(0, code_cap, codes.shape, generator=generator, device=codes.device)
    return torch.where(replace, random_codes, codes)


def contrastive_loss(
    seq: torch.Tensor,
    pos: torch.Tensor,
    target_ids: torch.LongTensor,
    temperature: float,
    hard_neg: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch InfoNCE over cosine similarities (VQ-Rec pre-training), mean over rows.

    seq (B, H) sequence outputs; pos (B, H) the representations of their targets, which are
    also every other row's negatives; target_ids (B,) globally unique item ids: rows with
    the same target are removed from each other's negatives (their logit is -inf, so they
    contribute nothing -- the official code sets them to a constant logit 0 instead, which
    still adds exp(0) to the denominator); hard_neg (B, H) one semi-synthetic negative per
    row, scored against its own row only.
    """
    if seq.shape != pos.shape or seq.dim() != 2:
        raise ValueError(f"seq and pos must both be (B, H), got {seq.shape} and {pos.shape}")
    if target_ids.shape != seq.shape[:1]:
        raise ValueError(f"target_ids must be ({seq.shape[0]},), got {tuple(target_ids.shape)}")
    seq = F.normalize(seq, dim=-1)
    pos = F.normalize(pos, dim=-1)
    logits = seq @ pos.T / temperature  # (B, B); the diagonal holds the positives
    same = target_ids.unsqueeze(1) == target_ids.unsqueeze(0)
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    if hard_neg is not None:
        if hard_neg.shape != seq.shape:
            raise ValueError(f"hard_neg must be {tuple(seq.shape)}, got {tuple(hard_neg.shape)}")
        hard = (seq * F.normalize(hard_neg, dim=-1)).sum(-1, keepdim=True) / temperature
        logits = torch.cat([logits, hard], dim=1)
    labels = torch.arange(seq.shape[0], device=seq.device)
    return F.cross_entropy(logits, labels)


def full_softmax_loss(
    seq: torch.Tensor,
    items: torch.Tensor,
    targets: torch.LongTensor,
    temperature: float,
) -> torch.Tensor:
    """Cross-entropy over every catalogue item (fine-tuning), mean over rows.

    seq (B, H); items (N+1, H) the catalogue with padding row 0, which is excluded from the
    softmax; targets (B,) item ids in 1..N.
    """
    if targets.numel() and (int(targets.min()) < 1 or int(targets.max()) >= items.shape[0]):
        raise ValueError(
            f"targets must be item ids in 1..{items.shape[0] - 1} (0 is padding), "
            f"got min {int(targets.min())} max {int(targets.max())}"
        )
    logits = F.normalize(seq, dim=-1) @ F.normalize(items[1:], dim=-1).T / temperature
    return F.cross_entropy(logits, targets - 1)


def sampled_softmax_loss(
    seq: torch.Tensor,
    pos: torch.Tensor,
    targets: torch.LongTensor,
    neg: torch.Tensor,
    neg_ids: torch.LongTensor,
    n_items: int,
    temperature: float,
) -> torch.Tensor:
    """Cross-entropy against K items sampled from the catalogue (shared by every row).

    Not in the official implementation (its fine-tuning scores every item): the full softmax
    costs rows x catalogue per epoch, so an epoch grows with the square of the data when the
    catalogue grows with it. seq (B, H); pos (B, H) the targets' representations; targets
    (B,) their ids; neg (K, H) / neg_ids (K,) K distinct items drawn uniformly from the N
    catalogue items. Each non-target item is in the sample with probability K/N, so the
    sampled negatives' exp-logits, weighted by N/K (``+ log(N/K)`` on the logits), estimate
    the full softmax's denominator without bias; a row's own target among them is masked.
    With K = N the loss is the full softmax exactly.
    """
    if seq.shape != pos.shape or seq.dim() != 2:
        raise ValueError(f"seq and pos must both be (B, H), got {seq.shape} and {pos.shape}")
    if neg.dim() != 2 or neg.shape[0] != neg_ids.shape[0] or neg.shape[1] != seq.shape[1]:
        raise ValueError(f"neg must be (K, {seq.shape[1]}) with K ids, got {tuple(neg.shape)}")
    if not 0 < neg_ids.shape[0] <= n_items:
        raise ValueError(f"K must be in 1..N={n_items}, got {neg_ids.shape[0]}")
    seq = F.normalize(seq, dim=-1)
    positive = (seq * F.normalize(pos, dim=-1)).sum(-1, keepdim=True) / temperature  # (B, 1)
    negative = seq @ F.normalize(neg, dim=-1).T / temperature  # (B, K)
    negative = negative + math.log(n_items / neg_ids.shape[0])
    negative = negative.masked_fill(targets.unsqueeze(1) == neg_ids.unsqueeze(0), float("-inf"))
    logits = torch.cat([positive, negative], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(targets))
