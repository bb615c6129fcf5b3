"""The ``vqrec`` command: one subcommand per pipeline stage.

Each subcommand is a ``main(argv)`` function that lives next to the code it runs and parses
its own flags; this file only maps names to them, so adding a stage touches one line here.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module:function, one-line help)
    "demo": ("vqrec.devtools.demo:main", "generate the bundled multi-domain demo data"),
    "clean": ("vqrec.spark.clean:main", "Spark: raw logs -> clean interactions, splits, items"),
    "encode": ("vqrec.spark.encode:main", "Spark: item text -> sentence embeddings (cached)"),
    "codes": ("vqrec.stages.codes:main", "fit OPQ quantizers and assign item codes"),
    "pretrain": ("vqrec.stages.train:main_pretrain", "pre-train the backbone on several domains"),
    "finetune": ("vqrec.stages.train:main_finetune", "transfer the backbone to a domain"),
    "evaluate": ("vqrec.stages.evaluate:main", "full-ranking Recall/NDCG of a trained model"),
    "baselines": ("vqrec.stages.baselines:main", "ID-only / text / VQ-Rec scratch / transfer"),
    "register": ("vqrec.mlops.registry:main", "MLflow: register backbone + domain models, promote"),
    "recommend": ("vqrec.spark.recommend:main", "Spark: each champion's top-k for every user"),
}


def _usage() -> str:
    lines = ["usage: vqrec <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "vqrec <command> --help for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vqrec: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    result = func(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
