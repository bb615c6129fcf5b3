"""Stage evaluate: full-ranking metrics of a committed domain model on valid/test.

Prints the result as JSON (the metrics are :mod:`vqrec.core.metrics`) and, with ``--out``,
writes it to that file. Never into the model's folder: a committed version is immutable (its
manifest would call any later file damage).
torch is imported inside :func:`main`, after the flags are parsed (``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from vqrec.lake.store import LakeError, atomic_path, lake_root, resolve_version, validate_name

# EvalConfig's (vqrec.core.metrics, which imports torch); tests/stages check they agree.
EVAL_BATCH_SIZE = 1024


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``vqrec evaluate``."""
    parser = argparse.ArgumentParser(prog="vqrec evaluate", description=main.__doc__)
    parser.add_argument(
        "--lake", default=None, help="lake root (default: $VQREC_LAKE or ./var/lake)"
    )
    parser.add_argument(
        "--models-version", default=None, help="models version to read (default: CURRENT)"
    )
    parser.add_argument("--domain", required=True, help="the domain's model to score (required)")
    parser.add_argument(
        "--split", default="test", choices=["valid", "test"], help="split (default: test)"
    )
    parser.add_argument(
        "--clean-version",
        default=None,
        help="clean version to score on (default: the one the model was trained on)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present) | cpu | cuda:N (default: auto)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=EVAL_BATCH_SIZE,
        help="rows per forward pass (default: %(default)s)",
    )
    parser.add_argument(
        "--out", default=None, help="also write the JSON result to this file (default: none)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """`vqrec evaluate`: full-ranking metrics of a fine-tuned domain model on valid/test."""
    args = build_parser().parse_args(argv)
    from vqrec.core.metrics import EvalConfig, evaluate, format_metrics
    from vqrec.core.trainer import pick_device
    from vqrec.lake.models import data_versions, load_domain_model
    from vqrec.lake.tables import load_domain

    try:
        domain = validate_name(args.domain, "domain")
        if args.clean_version:
            validate_name(args.clean_version, "version")
        models_dir = resolve_version(args.lake, "models", args.models_version)
    except (ValueError, LakeError) as err:  # a bad name or version: one line, no traceback
        print(f"vqrec evaluate: error: {err}", file=sys.stderr)
        return 2
    path = models_dir / "domains" / domain
    if not path.is_dir():
        print(f"vqrec evaluate: no model for domain {domain!r} in {models_dir}", file=sys.stderr)
        return 2
    device = pick_device(args.device)
    try:
        model, info = load_domain_model(path, device=device)
    except (ValueError, FileNotFoundError) as err:  # e.g. a file that is not safetensors
        print(f"vqrec evaluate: error: {err}", file=sys.stderr)
        return 2
    clean_version = args.clean_version or data_versions(path)["clean"]
    data = load_domain(lake_root(args.lake), domain, clean_version, need_codes=False)
    if data.n_items != model.config.n_items - 1:
        print(
            f"vqrec evaluate: clean version {data.source['clean']} has {data.n_items} items of "
            f"{domain}, the model {model.config.n_items - 1}",
            file=sys.stderr,
        )
        return 2
    config = EvalConfig(batch_size=args.batch_size, max_len=model.config.max_len)
    metrics = evaluate(model, data.splits[args.split], config=config, device=device, progress=True)
    result = {
        "domain": domain,
        "models_version": models_dir.name,
        "clean_version": data.source["clean"],
        "split": args.split,
        "rows": len(data.splits[args.split]),
        "eval_config": asdict(config),
        "metrics": metrics,
    }
    if args.out:  # one whole file, atomically
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
    print(f"{domain} {args.split}: {format_metrics(metrics)}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
