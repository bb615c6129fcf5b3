"""Losses: contrastive InfoNCE against a hand computation, code corruption, full and sampled
softmax."""

from __future__ import annotations

import math

import pytest
import torch

from vqrec.core.losses import (
    contrastive_loss,
    corrupt_codes,
    full_softmax_loss,
    sampled_softmax_loss,
)


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_contrastive_loss_matches_hand_computation():
    temperature = 0.5
    seq = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]
    pos = [[2.0, 1.0], [-1.0, 1.0], [1.0, 3.0]]
    hard = [[1.0, -1.0], [0.5, 1.0], [3.0, 0.0]]
    target_ids = [5, 7, 5]  # rows 0 and 2 share a target: not each other's negatives
    total = 0.0
    for i in range(3):
        positive = math.exp(_cos(seq[i], pos[i]) / temperature)
        negatives = sum(
            math.exp(_cos(seq[i], pos[j]) / temperature)
            for j in range(3)
            if j != i and target_ids[j] != target_ids[i]
        )
        fake = math.exp(_cos(seq[i], hard[i]) / temperature)
        total += -math.log(positive / (positive + negatives + fake))
    expected = total / 3

    loss = contrastive_loss(
        torch.tensor(seq),
        torch.tensor(pos),
        torch.tensor(target_ids),
        temperature,
        hard_neg=torch.tensor(hard),
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_contrastive_loss_masks_same_target_without_a_constant():
    # Two rows with the same target: the loss of each must not depend on the other's
    # positive at all (the official constant-logit masking would still add exp(0)).
    seq = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 1.0], [2.0, -1.0]], requires_grad=True)
    loss = contrastive_loss(seq, pos, torch.tensor([3, 3]), 0.1)
    # Each row only sees its own positive: softmax over one logit -> loss 0.
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert torch.count_nonzero(pos.grad) == 0
    # Without a hard negative and with distinct targets it is ordinary in-batch InfoNCE.
    distinct = contrastive_loss(seq, pos.detach(), torch.tensor([3, 4]), 0.1)
    assert distinct.item() > 0.0


def test_contrastive_loss_shape_errors():
    with pytest.raises(ValueError, match="target_ids"):
        contrastive_loss(torch.ones(3, 2), torch.ones(3, 2), torch.tensor([1, 2]), 0.07)
    with pytest.raises(ValueError, match="hard_neg"):
        contrastive_loss(
            torch.ones(3, 2), torch.ones(3, 2), torch.tensor([1, 2, 3]), 0.07, torch.ones(2, 2)
        )


def test_corrupt_codes_rate_and_range():
    code_cap, rho = 256, 0.75
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, code_cap, (4000, 32), generator=gen, dtype=torch.int16)
    fake = corrupt_codes(codes, rho, code_cap, generator=gen)
    assert fake.dtype == torch.long and fake.shape == codes.shape
    assert int(fake.min()) >= 0 and int(fake.max()) <= code_cap - 1
    changed = (fake != codes.long()).float().mean().item()
    # A replacement can redraw the same value (1/M): expected rate rho * (1 - 1/M).
    assert changed == pytest.approx(rho * (1 - 1 / code_cap), abs=0.01)
    # Reproducible with the same generator seed; rho=0 leaves codes unchanged.
    again = corrupt_codes(codes, rho, code_cap, generator=torch.Generator().manual_seed(0))
    first = corrupt_codes(codes, rho, code_cap, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, first)
    assert torch.equal(corrupt_codes(codes, 0.0, code_cap), codes.long())
    with pytest.raises(ValueError, match="rho"):
        corrupt_codes(codes, 1.5, code_cap)


def test_full_softmax_loss_excludes_padding():
    gen = torch.Generator().manual_seed(0)
    seq = torch.randn(4, 8, generator=gen)
    items = torch.randn(6, 8, generator=gen)  # row 0 = padding, items 1..5
    targets = torch.tensor([1, 5, 2, 2])
    temperature = 0.07
    loss = full_softmax_loss(seq, items, targets, temperature)

    total = 0.0
    for i in range(4):
        logits = [_cos(seq[i].tolist(), items[j].tolist()) / temperature for j in range(1, 6)]
        top = max(logits)
        log_z = top + math.log(sum(math.exp(x - top) for x in logits))
        total += log_z - logits[int(targets[i]) - 1]
    assert loss.item() == pytest.approx(total / 4, rel=1e-5)

    # Whatever the padding row holds, the loss does not change.
    items_other_pad = items.clone()
    items_other_pad[0] = seq[0] * 10
    assert full_softmax_loss(seq, items_other_pad, targets, temperature).item() == loss.item()
    with pytest.raises(ValueError, match="padding"):
        full_softmax_loss(seq, items, torch.tensor([0, 1, 2, 3]), temperature)


def test_sampled_softmax_over_the_whole_catalogue_is_the_full_softmax():
    gen = torch.Generator().manual_seed(1)
    seq = torch.randn(5, 8, generator=gen)
    items = torch.randn(7, 8, generator=gen)  # padding row 0, items 1..6
    targets = torch.tensor([1, 6, 3, 3, 2])
    every = torch.randperm(6, generator=gen) + 1  # K = N, in any order
    sampled = sampled_softmax_loss(seq, items[targets], targets, items[every], every, 6, 0.07)
    assert sampled.item() == pytest.approx(full_softmax_loss(seq, items, targets, 0.07).item())


def test_sampled_softmax_estimates_the_full_denominator_without_bias():
    """Averaged over draws, the sampled negatives' weighted exp-logits are the full softmax's
    sum over the non-target items (what ``+ log(N/K)`` and the target mask are for)."""
    gen = torch.Generator().manual_seed(2)
    n, k, temperature = 40, 8, 0.5
    seq = torch.randn(1, 8, generator=gen)
    items = torch.randn(n + 1, 8, generator=gen)
    target = torch.tensor([3])
    cos = torch.nn.functional.cosine_similarity(seq, items[1:]) / temperature
    want = (cos.exp().sum() - cos[2].exp()).item()  # every item but the target (id 3)
    pos_logit = cos[2].item()
    estimates = []
    for _ in range(4000):
        ids = torch.randperm(n, generator=gen)[:k] + 1
        loss = sampled_softmax_loss(seq, items[target], target, items[ids], ids, n, temperature)
        # loss = log(exp(pos) + S) - pos, so S = exp(loss + pos) - exp(pos)
        estimates.append(math.exp(loss.item() + pos_logit) - math.exp(pos_logit))
    assert sum(estimates) / len(estimates) == pytest.approx(want, rel=0.03)


def test_sampled_softmax_checks_its_shapes():
    seq, ids = torch.randn(2, 4), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="K must be"):
        sampled_softmax_loss(seq, seq, ids, torch.randn(2, 4), ids, 1, 0.1)
    with pytest.raises(ValueError, match="neg must be"):
        sampled_softmax_loss(seq, seq, ids, torch.randn(3, 4), ids, 5, 0.1)
