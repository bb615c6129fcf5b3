"""Code permutation: straight-through gradient, bijections, applying it, learning one."""

from __future__ import annotations

import pytest
import torch

from vqrec.core.losses import full_softmax_loss
from vqrec.core.model import ModelConfig, VQRec
from vqrec.core.permutation import (
    CodePermutation,
    StraightThroughPermute,
    apply_permutation,
    assignment,
    log_sinkhorn,
    matched_permutation,
    permuted_code_table,
)

D, M, H = 3, 8, 16


def random_perm(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(M, generator=gen) for _ in range(D)])


def is_bijection(perm: torch.Tensor) -> bool:
    return all(torch.equal(row.sort().values, torch.arange(M)) for row in perm)


def tiny_vq_model() -> VQRec:
    torch.manual_seed(0)
    config = ModelConfig(code_dim=D, code_cap=M, hidden=H, inner=24, max_len=6, dropout=0.0)
    model = VQRec(config)
    model.set_catalogue(codes=torch.randint(0, M, (21, D)))
    return model


def test_sinkhorn_is_nearly_doubly_stochastic():
    soft = log_sinkhorn(torch.randn(D, M, M), iters=20).exp()
    torch.testing.assert_close(soft.sum(-1), torch.ones(D, M), atol=1e-4, rtol=0)
    torch.testing.assert_close(soft.sum(-2), torch.ones(D, M), atol=1e-4, rtol=0)


def test_forward_is_hard_and_gradient_reaches_logits():
    torch.manual_seed(0)
    perm = CodePermutation(D, M)
    weights = torch.randn(D, M, H)
    out = perm(weights)
    # Forward values are an exact row permutation of each block.
    for d in range(D):
        matches = (out[d].unsqueeze(1) - weights[d].unsqueeze(0)).abs().sum(-1) < 1e-5
        assert torch.equal(matches.sum(1), torch.ones(M, dtype=torch.long))
        source_rows = matches.float().argmax(1)
        assert torch.equal(source_rows.sort().values, torch.arange(M))
    # ... and the straight-through path gives the logits a real gradient.
    (out * torch.randn(D, M, H)).sum().backward()
    assert perm.logits.grad is not None
    assert torch.isfinite(perm.logits.grad).all()
    assert perm.logits.grad.abs().sum() > 0


def test_eval_forward_uses_hard_assignment_of_logits():
    perm = CodePermutation(D, M)
    with torch.no_grad():
        perm.logits.normal_()
    perm.eval()  # no Gumbel noise
    weights = torch.randn(D, M, H)
    hard = perm.hard()
    expected = weights.gather(1, hard.unsqueeze(-1).expand(-1, -1, H))
    torch.testing.assert_close(perm(weights), expected)


def test_hard_is_a_bijection_per_block():
    perm = CodePermutation(D, M)
    with torch.no_grad():
        perm.logits.normal_()
        # Ties and a column every row wants: still a bijection.
        perm.logits[0] = 0.0
        perm.logits[1, :, 3] = 100.0
    hard = perm.hard()
    assert hard.shape == (D, M) and hard.dtype == torch.long
    assert is_bijection(hard)


def test_apply_permutation_reorders_table():
    model = tiny_vq_model()
    perm = random_perm(1)
    codes = torch.randint(0, M, (10, D))
    perm_coded = torch.stack([perm[d, codes[:, d]] for d in range(D)], dim=1)
    before = model.code_embeddings(perm_coded).detach()
    apply_permutation(model, perm)
    torch.testing.assert_close(model.code_embeddings(codes), before)
    # Padding rows stay zero; a non-bijection is refused.
    assert torch.count_nonzero(model.code_embedding.weight.view(D, M + 1, H)[:, 0]) == 0
    not_a_perm = perm.clone()
    not_a_perm[1, 0] = not_a_perm[1, 1]
    with pytest.raises(ValueError, match="bijection"):
        apply_permutation(model, not_a_perm)


def test_learns_a_known_permutation():
    """Recover a hidden permutation of a table from a loss on the permuted table."""
    torch.manual_seed(0)
    weights = torch.randn(D, M, H)
    truth = random_perm(2)
    target = weights.gather(1, truth.unsqueeze(-1).expand(-1, -1, H))

    def error(p: torch.Tensor) -> float:
        permuted = weights.gather(1, p.unsqueeze(-1).expand(-1, -1, H))
        return ((permuted - target) ** 2).mean().item()

    identity = torch.arange(M).expand(D, M)
    perm = CodePermutation(D, M)
    opt = torch.optim.Adam(perm.parameters(), lr=0.1)
    for _ in range(40):
        loss = ((perm(weights) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    learned = perm.hard()
    accuracy = (learned == truth).float().mean().item()
    identity_accuracy = (identity == truth).float().mean().item()
    assert accuracy >= 0.75 and accuracy > identity_accuracy
    assert error(learned) < 0.5 * error(identity)


def test_permutation_learns_through_the_model():
    """The permutation sits inside the model's code table; the frozen model's loss moves it."""
    model = tiny_vq_model().eval()
    model.freeze_backbone()
    perm = CodePermutation(D, M)
    history = torch.randint(1, 21, (4, 5))
    lengths = torch.tensor([5, 3, 2, 1])
    with model.using_code_table(permuted_code_table(model, perm)):
        seq = model.encode(history, lengths)
        loss = full_softmax_loss(seq, model.all_item_embeddings(), torch.tensor([1, 2, 3, 4]), 0.07)
    loss.backward()
    assert perm.logits.grad.abs().sum() > 0
    assert model.code_embedding.weight.grad is None  # the table itself is detached


def test_straight_through_gradient_equals_the_matrix_formula():
    """The gather-based Function has the gradients of (hard - soft.detach() + soft) @ W."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(D, M, M, generator=gen)
    soft = log_sinkhorn(logits, 3).exp().requires_grad_(True)
    weights = torch.randn(D, M, H, generator=gen, requires_grad=True)
    perm = assignment(logits)
    upstream = torch.randn(D, M, H, generator=gen)

    out = StraightThroughPermute.apply(soft, weights, perm)
    (out * upstream).sum().backward()
    grads = soft.grad.clone(), weights.grad.clone()
    soft.grad, weights.grad = None, None

    hard = torch.zeros(D, M, M).scatter_(-1, perm.unsqueeze(-1), 1.0)
    reference = torch.bmm(hard - soft.detach() + soft, weights)
    (reference * upstream).sum().backward()
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(grads[0], soft.grad)
    torch.testing.assert_close(grads[1], weights.grad)


def test_matched_permutation_recovers_a_planted_alignment():
    """Domain code i of block d stands for pre-trained row truth[d, i]; items have noisy
    pre-training codes. The matched assignment is a bijection that finds the planted rows
    and agrees with what the pre-trained table says far better than identity does."""
    gen = torch.Generator().manual_seed(0)
    n = 400
    blocks = torch.randn(D, M, H, generator=gen)
    truth = random_perm(5)
    domain_codes = torch.randint(0, M, (n, D), generator=gen)
    shared = truth.gather(1, domain_codes.T).T  # (n, D): the backbone's code of each item
    noisy = torch.rand(n, D, generator=gen) < 0.3  # 30% of positions coded differently
    shared = torch.where(noisy, torch.randint(0, M, (n, D), generator=gen), shared)
    targets = blocks.gather(1, shared.T.unsqueeze(-1).expand(-1, -1, H)).mean(0)  # (n, H)

    perm = matched_permutation(blocks, domain_codes, targets)
    assert is_bijection(perm)
    assert (perm == truth).float().mean() >= 0.9

    def agreement(p: torch.Tensor) -> float:
        rows = p.gather(1, domain_codes.T)  # (D, n) pre-trained rows the items would use
        rep = blocks.gather(1, rows.unsqueeze(-1).expand(-1, -1, H)).mean(0)
        return float((rep * targets).sum())

    identity = torch.arange(M).expand(D, M)
    assert agreement(perm) > agreement(identity) + 0.5 * abs(agreement(identity))
    assert agreement(perm) >= agreement(truth) - 1e-3  # optimal for the objective it solves
