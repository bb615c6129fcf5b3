"""The four-row table that says whether transfer pays: same harness, splits and evaluation.

1. ID-only SASRec: a learned embedding per item, trained from scratch on the domain.
2. text + linear adaptor: the frozen sentence embedding through a learned linear layer
   (UniSRec-style, without its mixture of experts), from scratch.
3. VQ-Rec from scratch: codes -> code-embedding table, everything trained on the domain.
4. VQ-Rec pre-trained + transferred: the backbone pre-trained on other domains, frozen;
   permutation, then the domain's lookup table fine-tuned.

Every row goes through ``vqrec finetune`` (one models version per row, named
``<prefix>-<row>``), so its config, per-epoch metrics and test metrics are in the lake.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vqrec.core.train_config import TrainConfig
from vqrec.lake.store import lake_root, resolve_version, validate_name
from vqrec.stages.flags import add_config_flags, config_kwargs
from vqrec.stages.train import main_finetune, main_pretrain

ROWS: dict[str, list[str]] = {
    "id": ["--mode", "scratch", "--item-encoder", "id"],
    "text": ["--mode", "scratch", "--item-encoder", "text"],
    "vq-scratch": ["--mode", "scratch"],
    "vq-transfer": ["--mode", "transfer"],
}
TITLES = {
    "id": "ID-only SASRec",
    "text": "text + linear adaptor",
    "vq-scratch": "VQ-Rec from scratch",
    "vq-transfer": "VQ-Rec pre-trained + transferred",
}
# TrainConfig fields the table takes as flags; every row (and the pre-training) gets them.
SHARED_FLAGS = ("epochs", "patience", "batch_size", "seed", "targets", "device")


class RowFailed(RuntimeError):
    """A row's `vqrec pretrain` / `vqrec finetune` exited non-zero (it said why on stderr)."""


def _run(command: Any, argv: list[str], what: str) -> None:
    code = command(argv)
    if code:
        raise RowFailed(f"{what} failed (exit {code}; its error is above)")


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """The table on test: R@10, N@10, R@50, N@50."""
    lines = [f"{'':<34} {'R@10':>7} {'N@10':>7} {'R@50':>7} {'N@50':>7}"]
    for name, m in rows.items():
        cells = [m.get(k, float("nan")) for k in ("recall@10", "ndcg@10", "recall@50", "ndcg@50")]
        lines.append(f"{TITLES.get(name, name):<34} " + " ".join(f"{v:7.4f}" for v in cells))
    return "\n".join(lines)


def run_baselines(
    lake: str | None,
    domain: str,
    pretrain_domains: list[str],
    prefix: str,
    shared_flags: list[str],
    backbone_version: str | None = None,
    rows: list[str] | None = None,
    pretrain_flags: list[str] | None = None,
    finetune_flags: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Pre-train (unless ``backbone_version``), then train each row; test metrics per row."""
    root = str(lake_root(lake))
    common = ["--lake", root, *shared_flags]
    rows = rows or list(ROWS)
    if "vq-transfer" in rows and backbone_version is None:
        backbone_version = f"{prefix}-backbone"
        argv = [*common, "--version", backbone_version, "--domains", ",".join(pretrain_domains)]
        _run(main_pretrain, argv + list(pretrain_flags or []), f"pre-training {backbone_version}")
    results: dict[str, dict[str, Any]] = {}
    for name in rows:
        version = f"{prefix}-{name}"
        argv = [*common, *(finetune_flags or []), "--version", version, "--domain", domain]
        argv += ROWS[name]
        if name == "vq-transfer":
            argv += ["--backbone-version", str(backbone_version)]
        _run(main_finetune, argv, f"row {name}")
        folder = resolve_version(root, "models", version) / "domains" / domain
        metrics = json.loads((folder / "metrics.json").read_text())
        results[name] = {"version": version, **metrics}
        print(f"{TITLES[name]}: {_format(metrics['test'])}", file=sys.stderr, flush=True)
    return results


def _format(metrics: dict[str, float]) -> str:
    from vqrec.core.metrics import format_metrics  # imports torch

    return format_metrics(metrics)


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``vqrec baselines`` (the training ones from TrainConfig)."""
    parser = argparse.ArgumentParser(prog="vqrec baselines", description=main.__doc__)
    parser.add_argument(
        "--lake", default=None, help="lake root (default: $VQREC_LAKE or ./var/lake)"
    )
    parser.add_argument("--domain", required=True, help="the domain of the table (required)")
    parser.add_argument(
        "--pretrain-domains", required=True, help="comma-separated pre-training domains (required)"
    )
    parser.add_argument(
        "--backbone-version",
        default=None,
        help="reuse this models version's backbone (default: pre-train <prefix>-backbone)",
    )
    parser.add_argument(
        "--prefix",
        default="baselines",
        help="models versions <prefix>-<row> (default: %(default)s)",
    )
    parser.add_argument(
        "--rows", default=",".join(ROWS), help="comma-separated subset (default: %(default)s)"
    )
    for stage in ("clean", "codes", "embeddings"):
        parser.add_argument(
            f"--{stage}-version", default=None, help=f"{stage} version (default: CURRENT)"
        )
    parser.add_argument(
        "--model-config", default="{}", help="JSON ModelConfig overrides (default: {})"
    )
    parser.add_argument(
        "--no-mlflow", action="store_true", help="log no MLflow runs (default: one per row)"
    )
    parser.add_argument(
        "--json", action="store_true", help="also print the rows as JSON (default: off)"
    )
    add_config_flags(parser, TrainConfig, only=SHARED_FLAGS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`vqrec baselines`: ID-only / text / VQ-Rec scratch / VQ-Rec transfer on one domain."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        domain = validate_name(args.domain, "domain")
        pretrain_domains = [
            validate_name(d.strip(), "domain") for d in args.pretrain_domains.split(",")
        ]
        prefix = validate_name(args.prefix, "prefix")
    except ValueError as err:
        print(f"vqrec baselines: error: {err}", file=sys.stderr)
        return 2
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    shared = [f"--{k.replace('_', '-')}={v}" for k, v in config_kwargs(args, SHARED_FLAGS).items()]
    shared += ["--model-config", args.model_config] + (["--no-mlflow"] if args.no_mlflow else [])
    for flag in ("clean_version", "codes_version"):
        if getattr(args, flag):
            shared += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    finetune_flags = []
    if args.embeddings_version:
        finetune_flags = ["--embeddings-version", args.embeddings_version]
    try:
        results = run_baselines(
            args.lake, domain, pretrain_domains, prefix, shared, args.backbone_version, rows,
            finetune_flags=finetune_flags,
        )  # fmt: skip
    except RowFailed as err:
        print(f"vqrec baselines: error: {err}", file=sys.stderr)
        return 2
    print(f"{domain}, test (early-stopped on valid NDCG@10):")
    print(format_table({name: r["test"] for name, r in results.items()}))
    if args.json:
        print(json.dumps({name: r["test"] for name, r in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
