"""The PNGs logged with the runs: training curves, code usage, collision histogram.

matplotlib with the Agg backend: workers have no display.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(
    records: list[Mapping[str, float]], path: str | os.PathLike[str], title: str = "training"
) -> Path:
    """Loss (left) and validation metrics (right) per epoch, as a PNG."""
    plt = _pyplot()
    fig, (ax_loss, ax_valid) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(records)]
    keys = sorted({k for r in records for k in r if k != "epoch"})
    loss_keys = [k for k in keys if "loss" in k]
    # The early-stopping figures, not every cut-off: a readable plot.
    valid_keys = [k for k in keys if "valid" in k and k.endswith("@10")] or [
        k for k in keys if "valid" in k
    ]
    for key in loss_keys:
        ax_loss.plot(*_series(epochs, records, key), marker="o", label=key)
    for key in valid_keys:
        ax_valid.plot(*_series(epochs, records, key), marker="o", label=key)
    ax_loss.set(title="loss", xlabel="epoch")
    ax_valid.set(title="validation", xlabel="epoch")
    for ax in (ax_loss, ax_valid):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _series(epochs: list[float], records: list[Mapping[str, float]], key: str):
    pairs = [(e, r[key]) for e, r in zip(epochs, records, strict=True) if key in r]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_code_usage(
    entropy: list[float],
    path: str | os.PathLike[str],
    code_cap: int | None = None,
    title: str = "code usage",
) -> Path:
    """Usage entropy (bits) of each sub-vector's centroids, with the uniform maximum."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, len(entropy) * 0.25), 3.5))
    ax.bar(range(len(entropy)), entropy, color="tab:blue")
    if code_cap:
        ax.axhline(math.log2(code_cap), color="tab:red", ls="--", label=f"log2(M={code_cap})")
        ax.legend(fontsize=8)
    ax.set(title=title, xlabel="sub-vector", ylabel="entropy (bits)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_collision_histogram(
    groups: Mapping[Any, int] | list[int], path: str | os.PathLike[str], title: str = "collisions"
) -> Path:
    """How many codes are shared by 1, 2, 3... items.

    ``groups`` is either ``{group_size: number_of_codes}`` or a list of group sizes.
    """
    if isinstance(groups, Mapping):
        sizes = {int(k): int(v) for k, v in groups.items()}
    else:
        sizes = {}
        for size in groups:
            sizes[int(size)] = sizes.get(int(size), 0) + 1
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = sorted(sizes)
    ax.set(title=title, xlabel="items sharing one code", ylabel="codes")
    if xs:
        ax.bar([str(x) for x in xs], [sizes[x] for x in xs], color="tab:orange")
        ax.set_yscale("log")
    else:  # a domain whose every item has a code of its own still gets its plot
        ax.text(0.5, 0.5, "no collisions: every item has a code of its own",
                ha="center", va="center", transform=ax.transAxes)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
