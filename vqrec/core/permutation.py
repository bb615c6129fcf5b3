"""Learned code permutation for transfer (VQ-Rec's code-embedding re-assignment).

A new domain's codes come from its own quantizer, whose centroid labels mean nothing to the
pre-trained code table. Before fine-tuning the table, VQ-Rec learns, per sub-vector, which
pre-trained row each of the domain's M codes should use: an M x M permutation per block,
relaxed with Gumbel-Sinkhorn.

Here the forward pass uses the HARD permutation (an exact assignment on the noisy Sinkhorn
matrix) and the backward pass is straight-through to the soft matrix,
``hard - soft.detach() + soft``, so the logits get a real gradient. (The official code
rounds the soft matrix with a ceiling, whose gradient is zero: its logits never move.)
The final result, :meth:`CodePermutation.hard`, is a true bijection per block from
``scipy.optimize.linear_sum_assignment`` on the logits.

Usage in a training loop (the table frozen, only ``perm.logits`` in the optimizer)::

    perm = CodePermutation(D, M)
    with model.using_code_table(permuted_code_table(model, perm)):
        loss = ...  # any loss of model outputs
    loss.backward()
    ...
    apply_permutation(model, perm.hard())  # for good; then fine-tune the table
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from vqrec.core.model import VQRec


def log_sinkhorn(log_alpha: torch.Tensor, iters: int) -> torch.Tensor:
    """Alternate row and column normalisation in log space: [..., M, M] -> log of a
    (nearly) doubly-stochastic matrix."""
    for _ in range(iters):
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-2, keepdim=True)
    return log_alpha


def assignment(scores: torch.Tensor) -> torch.LongTensor:
    """The permutation of maximal total score per block: (D, M, M) -> (D, M) indices with
    ``perm[d, i] = j`` meaning row i takes column j."""
    values = scores.detach().double().cpu().numpy()
    perm = np.empty(values.shape[:2], dtype=np.int64)
    for d, block in enumerate(values):
        rows, cols = linear_sum_assignment(block, maximize=True)
        perm[d, rows] = cols
    return torch.from_numpy(perm).to(scores.device)


class StraightThroughPermute(torch.autograd.Function):
    """``(hard - soft.detach() + soft) @ W`` without the (D, M, M) x (D, M, H) products
    that only produce values: the forward pass is a gather by the hard permutation, and
    the backward pass computes the two gradients of that expression directly."""

    @staticmethod
    def forward(ctx, soft: torch.Tensor, weights: torch.Tensor, perm: torch.Tensor):
        index = perm.unsqueeze(-1).expand(-1, -1, weights.shape[-1])
        ctx.save_for_backward(weights, index)
        return weights.gather(1, index)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        weights, index = ctx.saved_tensors
        grad_soft = grad_weights = None
        if ctx.needs_input_grad[0]:  # d/d(soft) of (P @ W) = grad_out @ W^T
            grad_soft = torch.bmm(grad_out, weights.transpose(1, 2))
        if ctx.needs_input_grad[1]:  # d/dW = hard^T @ grad_out: a scatter
            grad_weights = torch.zeros_like(weights).scatter_add_(1, index, grad_out)
        return grad_soft, grad_weights, None


class CodePermutation(nn.Module):
    """One learnable M x M permutation per sub-vector (Gumbel-Sinkhorn, straight-through)."""

    def __init__(
        self,
        code_dim: int,
        code_cap: int,
        sinkhorn_iters: int = 3,
        tau: float = 1.0,
        noise: float = 1.0,
    ):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.code_dim, self.code_cap = code_dim, code_cap
        self.sinkhorn_iters, self.tau, self.noise = sinkhorn_iters, tau, noise
        # logits[d, i, j]: preference of the domain's code i (block d) for pre-trained row j.
        # Zeros: no prior (the two quantizers' labels are unrelated).
        self.logits = nn.Parameter(torch.zeros(code_dim, code_cap, code_cap))

    def matrices(self) -> tuple[torch.LongTensor, torch.Tensor]:
        """(hard, soft): the hard permutation as (D, M) indices and the soft Sinkhorn matrix
        (D, M, M). Gumbel noise only in training mode."""
        log_alpha = self.logits
        if self.training and self.noise > 0:
            uniform = torch.rand_like(log_alpha).clamp_(1e-10, 1.0 - 1e-7)
            log_alpha = log_alpha - self.noise * torch.log(-torch.log(uniform))
        log_alpha = log_sinkhorn(log_alpha / self.tau, self.sinkhorn_iters)
        # Sinkhorn only subtracts row and column constants (in log space), which shifts every
        # permutation's total by the same amount: the assignment on log_alpha is the
        # assignment on the noisy logits, whatever the number of iterations.
        return assignment(log_alpha), log_alpha.exp()

    def forward(self, table_block_weights: torch.Tensor) -> torch.Tensor:
        """Permute code rows: (D, M, H) -> (D, M, H), ``out[d, i] = W[d, perm[d, i]]``.

        The values are exactly the hard permutation; the gradient is that of
        ``(hard - soft.detach() + soft) @ W``: to ``self.logits`` through the soft Sinkhorn
        matrix (straight-through), and to W (if it requires grad) through the hard one.
        """
        expected = (self.code_dim, self.code_cap)
        if tuple(table_block_weights.shape[:2]) != expected:
            raise ValueError(
                f"table blocks must be (D, M, H) = {expected + ('H',)}, "
                f"got {tuple(table_block_weights.shape)}"
            )
        perm, soft = self.matrices()
        return StraightThroughPermute.apply(soft, table_block_weights, perm)

    @torch.no_grad()
    def hard(self) -> torch.LongTensor:
        """The learned permutation (D, M), a bijection per block (assignment on the logits)."""
        return assignment(self.logits)


def alignment_scores(
    blocks: torch.Tensor,
    codes: torch.LongTensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """How well each pre-trained row suits each of the domain's codes: (D, M, M).

    ``blocks`` (D, M, H) the pre-trained code table; ``codes`` (N, D) the domain's raw codes
    of its N items; ``targets`` (N, H) the representation the pre-trained model gives each
    item (its code under the pre-training quantizer, looked up in the pre-trained table);
    ``weights`` (N,) how much each item counts (e.g. its training frequency).

    ``scores[d, i, j] = <W[d, j], sum over items x with code i in block d of w_x T(x)>``.
    An item's representation is the mean of its D rows, so the weighted agreement
    ``sum_x w_x <rep(x), T(x)>`` of a permuted table is exactly ``(1/D)`` times the sum over
    blocks of the chosen ``scores[d, i, perm[d, i]]``: one assignment problem per block.
    """
    d, m, h = blocks.shape
    n = codes.shape[0]
    if codes.shape != (n, d) or targets.shape != (n, h):
        raise ValueError(
            f"codes must be (N, {d}) and targets (N, {h}), got {tuple(codes.shape)} and "
            f"{tuple(targets.shape)}"
        )
    w = torch.ones(n, dtype=targets.dtype) if weights is None else weights.to(targets.dtype)
    weighted = targets * w.unsqueeze(-1)  # (N, H)
    # sums[d, i] = sum of weighted targets of the items whose block-d code is i: (D, M, H)
    sums = torch.zeros(d, m, h, dtype=targets.dtype)
    index = (codes.long() + torch.arange(d) * m).T.reshape(-1)  # block-major (D*N,)
    sums.view(d * m, h).index_add_(0, index, weighted.repeat(d, 1))
    return torch.bmm(sums, blocks.detach().to(targets.dtype).transpose(1, 2))  # (D, M, M)


def matched_permutation(
    blocks: torch.Tensor,
    codes: torch.LongTensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.LongTensor:
    """The data-driven alignment: per block, the bijection of the domain's codes onto the
    pre-trained rows that maximises the agreement of :func:`alignment_scores` (no training;
    one 256 x 256 assignment per block, milliseconds).

    Where the paper learns the permutation by Gumbel-Sinkhorn through the frozen model, this
    asks directly what the frozen model already knows about the domain's items: what their
    codes under the pre-training quantizer look like in the pre-trained table.
    """
    return assignment(alignment_scores(blocks, codes, targets, weights))


def check_permutation(perm: torch.Tensor, code_dim: int, code_cap: int) -> torch.LongTensor:
    """Return ``perm`` as a LongTensor if it is a (D, M) bijection per block, else raise."""
    perm = torch.as_tensor(perm).long()
    if tuple(perm.shape) != (code_dim, code_cap):
        raise ValueError(f"permutation must be ({code_dim}, {code_cap}), got {tuple(perm.shape)}")
    expected = torch.arange(code_cap, device=perm.device)
    for d in range(code_dim):
        if not torch.equal(perm[d].sort().values, expected):
            raise ValueError(f"permutation row {d} is not a bijection of 0..{code_cap - 1}")
    return perm


def permuted_code_table(
    model: VQRec, permutation: CodePermutation, detach_table: bool = True
) -> torch.Tensor:
    """The model's code table with ``permutation`` applied, for ``model.using_code_table``.

    ``detach_table`` (default): only the permutation learns (the paper's first transfer
    phase); the pre-trained rows get no gradient.
    """
    blocks = model.code_blocks()
    if detach_table:
        blocks = blocks.detach()
    return model.blocks_to_table(permutation(blocks))


@torch.no_grad()
def apply_permutation(model: VQRec, perm: torch.LongTensor) -> None:
    """Permanently reorder each block's code rows: new row i of block d = old row perm[d, i].

    Afterwards ``model.code_embeddings(codes)`` equals the old ``code_embeddings`` of
    ``perm[d, codes[..., d]]``; the catalogue codes are unchanged.
    """
    c = model.config
    if c.item_encoder != "vq":
        raise RuntimeError(f"apply_permutation needs item_encoder='vq', not {c.item_encoder!r}")
    perm = check_permutation(perm, c.code_dim, c.code_cap).to(model.device)
    blocks = model.code_blocks()  # a view into the parameter
    reordered = blocks.gather(1, perm.unsqueeze(-1).expand(-1, -1, blocks.shape[-1]))
    blocks.copy_(reordered)
