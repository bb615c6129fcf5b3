"""How to train: :class:`TrainConfig`, the modes and alignments it names, fine-tuning's defaults.

Apart from :mod:`vqrec.core.trainer` (which imports torch) so that the command lines can build
their flags and ``--help`` from it without importing torch (vqrec.stages.flags).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODES = ("pretrain", "transfer", "full", "scratch")
# How a transferred domain's codes are aligned with the pre-trained table (vqrec.core.permutation):
# matched: the data-driven assignment (no training); learned: Gumbel-Sinkhorn epochs (the
# paper's); identity / random: ablations.
PERMUTATIONS = ("matched", "learned", "identity", "random")


@dataclass
class TrainConfig:
    """How to train (the model's shape lives in :class:`vqrec.core.model.ModelConfig`)."""

    # Each field's help is its flag's help (vqrec.stages.flags declares the CLI flags).
    mode: str = field(
        default="pretrain",
        metadata={
            "help": "transfer: the backbone frozen, the domain's code table trained; full: "
            "nothing frozen; scratch: random init; pretrain: vqrec pretrain's",
            "choices": MODES,
        },
    )
    epochs: int = field(
        default=300, metadata={"help": "upper bound; early stopping usually ends first"}
    )
    batch_size: int = field(default=2048, metadata={"help": "training rows per batch"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    patience: int = field(
        default=10, metadata={"help": "epochs without a better valid NDCG@10 before stopping"}
    )
    seed: int = field(default=2026, metadata={"help": "random seed"})
    device: str = field(
        default="auto", metadata={"help": "auto (CUDA when present) | cpu | cuda | cuda:N"}
    )
    rho: float = field(
        default=0.75, metadata={"help": "share of code indices corrupted for the hard negative"}
    )
    permutation: str = field(
        default="learned",
        metadata={"help": "code alignment (transfer/full)", "choices": PERMUTATIONS},
    )
    permutation_epochs: int = field(default=5, metadata={"help": "learned permutation only"})
    # Adam on the Gumbel-Sinkhorn logits. At 1e-3 (the value before) ~20 steps an epoch move
    # a logit by ~0.02 against Gumbel noise of scale 1: the hard permutation stayed random and
    # the loss flat (8.79-8.80 on Scientific). At 0.1 it falls (8.74 -> 8.43 in 3 epochs).
    permutation_lr: float = field(
        default=0.1, metadata={"help": "Adam learning rate of the learned permutation"}
    )
    sinkhorn_iters: int = field(
        default=3, metadata={"help": "Sinkhorn normalisations per step (learned permutation)"}
    )
    bucket: bool = field(
        default=True,  # see vqrec.data.batch_rows
        metadata={"help": "length-bucketed batches (--no-bucket: plain random batches)"},
    )
    # "last": one target per prefix row (the published way: every prefix is a row);
    # "all": each user's training part as one chain, a target at every position (the same
    # targets and histories in one causal pass; see vqrec.data.training_chains).
    targets: str = field(
        default="last",
        metadata={
            "help": "last: a row per prefix (published); all: a target at every position "
            "of a chain",
            "choices": ("last", "all"),
        },
    )
    max_len: int = field(default=50, metadata={"help": "items of history a row keeps"})
    eval_batch_size: int = field(default=1024, metadata={"help": "rows per validation batch"})
    valid_rows: int = field(
        default=0,
        metadata={"help": "evaluate on a fixed sample of this many valid rows/domain (0: all)"},
    )
    # 0: the paper's full softmax, every catalogue item scored for every target (an epoch
    # costs rows x catalogue); K: K items sampled per step (vqrec.core.losses), for
    # catalogues far larger than K (docs/SCALE.md). Fine-tuning only.
    negatives: int = field(
        default=0,
        metadata={"help": "fine-tune softmax over K sampled items a step (0: every item)"},
    )
    # Pre-training only. What a backbone is for is transfer, and pre-training's own valid
    # metric did not predict it on the shared data (docs/QUALITY.md: an epoch-7 backbone
    # transferred better than the epoch-21 one that pre-training's valid preferred). With a
    # probe domain (one outside pre-training), every probe_every-th epoch fine-tunes a copy of
    # the model on it (a short transfer: probe_epochs with the fine-tune defaults) and early
    # stopping, patience included, counts that transfer's best valid NDCG@10 (probe/ndcg@10).
    probe_domain: str = field(
        default="",
        metadata={
            "help": "pre-training: early-stop on a short transfer to this domain (outside "
            "pre-training) instead of pre-training's own valid (empty: off)"
        },
    )
    probe_every: int = field(
        default=1, metadata={"help": "epochs between transfer probes (patience counts probes)"}
    )
    probe_epochs: int = field(
        default=3, metadata={"help": "fine-tune epochs of one transfer probe"}
    )
    amp: bool = field(
        default=False, metadata={"help": "bf16 autocast (not measured to help on CPU)"}
    )
    compile: bool = field(
        default=False, metadata={"help": "torch.compile the training objective (not measured)"}
    )
    progress: bool = field(default=True, metadata={"help": "tqdm bars"})
    stop_after_epochs: int = field(
        default=0, metadata={"help": "tests: stop as if killed after this many epochs (0: off)"}
    )
    # >0: the epoch (of any phase) that crosses this wall time is the last of its phase, and
    # the fine-tuning phase then stops after its first epoch
    time_budget_min: float = field(
        default=0.0, metadata={"help": "minutes; the last epoch is the one crossing it (0: off)"}
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.targets not in ("last", "all"):
            raise ValueError(f"targets must be 'last' or 'all', not {self.targets!r}")
        if self.permutation not in PERMUTATIONS:
            raise ValueError(f"permutation must be one of {PERMUTATIONS}, not {self.permutation!r}")
        for name in (
            "epochs",
            "batch_size",
            "patience",
            "max_len",
            "eval_batch_size",
            "probe_every",
            "probe_epochs",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.negatives < 0:
            raise ValueError(f"negatives must be >= 0, not {self.negatives}")
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"rho must be in [0, 1], not {self.rho}")


# Fine-tuning departs from the pre-training defaults above, each chosen on Scientific's valid
# split (docs/QUALITY.md): lr 1e-1 for the transfer, which trains only the lookup table
# behind a LayerNorm (valid N@10, 3 seeds each: 0.0689 at the official README's 3e-3, 0.0708
# at 3e-2, 0.0716 at 1e-1; on the rebuilt backbone 0.0716 at 1e-1, 0.0725 at 3e-1 and 0.0691
# at 1 (one seed): 3e-1 leads on N@10 by 0.0009 but ties N@50 and loses R@50 (0.2672 vs
# 0.2707), so 1e-1 stays; `--mode full` and `scratch` get FINETUNE_LR's), a target at
# every position of each user's chain (the same targets as the prefix rows, ~8x fewer rows
# an epoch), and the matched alignment (no epochs).
FINETUNE_DEFAULTS: dict[str, Any] = {"lr": 1e-1, "targets": "all", "permutation": "matched"}
# The lr of a fine-tune that names none, by mode: 1e-1 suits the lookup table alone; a mode
# that trains the Transformer too would be wrecked by it (3e-3: the official README's
# fine-tune lr; 1e-3: RecBole's SASRec default, what the study's scratch rows use).
FINETUNE_LR: dict[str, float] = {"transfer": FINETUNE_DEFAULTS["lr"], "full": 3e-3, "scratch": 1e-3}


def finetune_defaults(mode: str = "transfer") -> dict[str, Any]:
    """The fields a fine-tune in ``mode`` defaults to: :data:`FINETUNE_DEFAULTS` with the
    mode's lr (:data:`FINETUNE_LR`; a mode it does not know keeps the transfer's, and
    TrainConfig then names the bad mode)."""
    lr = FINETUNE_LR.get(mode, FINETUNE_DEFAULTS["lr"])
    return {"mode": "transfer", **FINETUNE_DEFAULTS, "lr": lr}


def finetune_config(**overrides: Any) -> TrainConfig:
    """A fine-tuning TrainConfig: :func:`finetune_defaults` of its mode, then ``overrides``."""
    return TrainConfig(**{**finetune_defaults(overrides.get("mode", "transfer")), **overrides})
