"""The served model's top-k selection (vqrec.mlops.pyfunc.top_k) against a whole sort."""

from __future__ import annotations

import numpy as np
import torch

from vqrec.mlops.pyfunc import top_k


def brute_force(row: np.ndarray, k: int) -> list[int]:
    """Columns by (score descending, column ascending), -inf never: the rule top_k keeps."""
    allowed = [c for c in range(len(row)) if row[c] > -np.inf]
    return sorted(allowed, key=lambda c: (-row[c], c))[:k]


def test_top_k_equals_a_stable_sort_of_the_whole_row_with_ties_and_masks() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        n_cols = int(rng.integers(1, 40))
        # Few distinct values: ties everywhere, also across the k-th place (colliding codes).
        scores = rng.integers(0, 4 if trial % 2 else 50, size=(8, n_cols)).astype(np.float32)
        scores[rng.random(scores.shape) < 0.3] = -np.inf  # padding, excluded or foreign items
        ks = [int(k) for k in rng.integers(1, n_cols + 3, size=8)]
        picked = top_k(torch.as_tensor(scores), ks)
        for row, k, (columns, values) in zip(scores, ks, picked, strict=True):
            assert columns == brute_force(row, k)
            assert values == [float(row[c]) for c in columns]


def test_top_k_of_a_row_with_nothing_allowed_is_empty() -> None:
    scores = torch.tensor([[-torch.inf, -torch.inf], [1.0, -torch.inf]])
    assert top_k(scores, [5, 5]) == [([], []), ([0], [1.0])]
