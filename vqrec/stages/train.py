"""Stages pretrain and finetune: read the lake, train (:mod:`vqrec.core.trainer`), commit.

``vqrec pretrain`` commits ``models/<V>/backbone``; ``vqrec finetune`` commits the part
``models/<V>/domains/<d>`` (the folder contract: :mod:`vqrec.lake.models`). Checkpoints
live under ``<lake>/checkpoints/<V>/<part>/`` until the commit, so a retried task resumes.

Both commands log an MLflow run as the DAG's training tasks do (one mechanism,
:func:`vqrec.mlops.tracking.stage_run`): ``--no-mlflow`` turns it off. torch, faiss and
mlflow are imported inside the functions, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqrec.core.train_config import (
    FINETUNE_LR,
    MODES,
    TrainConfig,
    finetune_config,
    finetune_defaults,
)
from vqrec.lake.store import (
    LakeError,
    default_version,
    lake_root,
    resolve_part,
    resolve_version,
    staged_part,
    staged_version,
    validate_name,
)
from vqrec.stages.flags import add_config_flags, config_from_dict, config_kwargs

if TYPE_CHECKING:
    import numpy as np

    from vqrec.core.model import ModelConfig
    from vqrec.core.sequences import DomainData
    from vqrec.core.trainer import TrainResult


def _checkpoint_path(lake: Path, version: str, part: str) -> Path:
    # Checked here, before any training: the version names a folder that is written every
    # epoch, long before staged_version would refuse a name like "../x" at the commit.
    version = validate_name(version, "version")
    return lake / "checkpoints" / version / validate_name(part, "part") / "last.pt"


def _drop_checkpoint(checkpoint: Path) -> None:
    """After the commit: the part's checkpoint folder, then its version's and the
    checkpoints folder when nothing else is left in them (a parallel part may still be)."""
    shutil.rmtree(checkpoint.parent, ignore_errors=True)
    for folder in (checkpoint.parent.parent, checkpoint.parent.parent.parent):
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return


def _copy_into(out: Path, source: Path, names: list[str]) -> None:
    for name in names:
        src = source / name
        if src.exists() and not (out / name).exists():
            shutil.copytree(src, out / name)


def _code_cap(lake: Path, codes_version: str | None) -> int | None:
    try:
        cfg = json.loads(
            (resolve_version(lake, "codes", codes_version) / "config.json").read_text()
        )
        return 2 ** int(cfg["bits"])
    except (FileNotFoundError, KeyError, ValueError):
        return None


def backbone_codes(lake: Path, backbone_dir: Path, data: DomainData) -> np.ndarray:
    """``data``'s items coded by the frozen quantizer the backbone was pre-trained with.

    The backbone's config names, per pre-training domain, the codes version and quantizer
    it was trained on; ``data.text`` holds the domain's embeddings (row 0 padding).
    """
    info = json.loads((backbone_dir / "backbone" / "config.json").read_text())
    return codes_under(lake, info["data"], data, where=str(backbone_dir))


def codes_under(
    lake: Path, sources: dict[str, dict[str, str]], data: DomainData, where: str
) -> np.ndarray:
    """``data``'s items coded by the one quantizer that coded every pre-training domain
    (``sources``: their DomainData.source), row 0 the padding: what the matched alignment
    compares the domain's own codes with."""
    import numpy as np

    from vqrec.stages.codes import code_new_items

    used = {(s["codes"], s.get("quantizer")) for s in sources.values()}
    if len(used) != 1 or None in next(iter(used)):
        raise ValueError(
            f"{where}: the pre-training domains do not name one codes version and "
            f"quantizer ({sorted(map(str, used))}): cannot align codes by matching"
        )
    version, quantizer = used.pop()
    codes_dir = resolve_version(lake, "codes", version)
    codes = code_new_items(codes_dir, data.name, data.text[1:], quantizer=quantizer)
    return np.concatenate([np.zeros((1, codes.shape[1]), np.int64), codes.astype(np.int64)])


def pretrain_to_lake(
    lake: str | os.PathLike[str],
    version: str,
    domains: list[str],
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    clean_version: str | None = None,
    codes_version: str | None = None,
    resume: bool = False,
    embeddings_version: str | None = None,
) -> TrainResult | None:
    """Pre-train on ``domains`` and commit ``models/<version>/backbone``.

    Checkpoints every epoch under ``<lake>/checkpoints/<version>/backbone`` (removed once
    committed): with ``resume`` a retried run continues from its last finished epoch.
    Domains already committed in the version are kept. Under DDP only rank 0 writes; the
    other ranks return None. ``cfg.probe_domain``: that domain is read from the same
    versions (its own codes, and its texts coded by the pre-training quantizer for the
    matched alignment) and early stopping follows a short transfer to it.
    """
    from vqrec.core.sequences import merge_domains
    from vqrec.core.trainer import pretrain, world_rank
    from vqrec.lake.models import write_backbone
    from vqrec.lake.tables import load_domain

    lake = lake_root(lake)
    model_cfg.code_cap = _code_cap(lake, codes_version) or model_cfg.code_cap
    loaded = [load_domain(lake, d, clean_version, codes_version) for d in domains]
    data = merge_domains(loaded)
    probe = None
    if cfg.probe_domain:
        probe_name = validate_name(cfg.probe_domain, "domain")
        probe = load_domain(
            lake, probe_name, clean_version, codes_version, embeddings_version, need_text=True
        )
        sources = {d.name: d.source for d in loaded}
        probe.backbone_codes = codes_under(lake, sources, probe, where=f"pretrain {version}")
    checkpoint = _checkpoint_path(lake, version, "backbone")
    result = pretrain(data, cfg, model_cfg, checkpoint, resume=resume, probe=probe)
    if world_rank() != 0:
        return None
    info = {"domains": list(domains), "offsets": data.offsets}
    info["data"] = {d.name: d.source for d in loaded}
    with staged_version(lake, "models", version, metadata={"part": "backbone"}) as out:
        existing = lake / "models" / version
        if existing.is_dir():
            _copy_into(out, existing, ["domains"])
        write_backbone(out, result, info)
    _drop_checkpoint(checkpoint)
    return result


def finetune_to_lake(
    lake: str | os.PathLike[str],
    version: str,
    domain: str,
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    backbone_version: str | None = None,
    clean_version: str | None = None,
    codes_version: str | None = None,
    embeddings_version: str | None = None,
    resume: bool = False,
    move_current: bool = True,
    warm_start_version: str | None = None,
) -> TrainResult:
    """Fine-tune one domain and commit it as the part ``domains/<domain>`` of ``version``.

    ``backbone_version`` names the models version whose backbone is transferred (CURRENT when
    None; unused in ``scratch`` mode). A version that does not exist yet is created holding a
    copy of that backbone; the domain is then committed as its own part
    (vqrec.lake.store.staged_part), so parallel fine-tunes of one version never overwrite
    each other. A new version moves ``models/CURRENT`` only when it holds a backbone (and
    ``move_current``): CURRENT is what the next plain transfer reads its backbone from, so a
    scratch run never points it at a version without one.

    ``warm_start_version`` (the incremental nightly): a models version holding this domain's
    model trained on the same backbone; training starts from it (its lookup table is already
    aligned with the backbone, so there is no alignment phase) instead of from the backbone's
    pre-trained table. The version still gets ``backbone_version``'s backbone.
    """
    from vqrec.core.model import load_model
    from vqrec.core.trainer import finetune
    from vqrec.lake.models import write_domain_part
    from vqrec.lake.tables import load_domain

    lake = lake_root(lake)
    domain = validate_name(domain, "domain")
    backbone, backbone_dir = None, None
    if cfg.mode != "scratch":
        backbone_dir = resolve_version(lake, "models", backbone_version)
        backbone = load_model(backbone_dir / "backbone" / "model.safetensors")
    if warm_start_version is not None:
        if cfg.mode != "transfer":
            raise ValueError(f"a warm start fine-tunes in mode 'transfer', not {cfg.mode!r}")
        warm = resolve_part(lake, "models", warm_start_version, f"domains/{domain}")
        backbone = load_model(warm / "model.safetensors")
        cfg = dataclasses.replace(cfg, permutation="identity")
    model_cfg.code_cap = _code_cap(lake, codes_version) or model_cfg.code_cap
    encoder = model_cfg.item_encoder
    matched = backbone is not None and encoder == "vq" and cfg.permutation == "matched"
    data = load_domain(
        lake,
        domain,
        clean_version,
        codes_version,
        embeddings_version,
        need_codes=encoder == "vq",
        need_text=encoder == "text" or matched,
    )
    if matched:
        data.backbone_codes = backbone_codes(lake, backbone_dir, data)
    part = f"domain-{domain}"
    checkpoint = _checkpoint_path(lake, version, part)
    result = finetune(data, cfg, model_cfg, backbone, checkpoint, resume)
    info = {
        "domain": domain,
        "data": data.source,
        "backbone_version": backbone_dir.name if backbone_dir else None,
        "warm_start_version": warm_start_version,
    }
    if not (lake / "models" / version / "_SUCCESS").exists():
        has_backbone = backbone_dir is not None
        meta = {"part": part}
        with staged_version(lake, "models", version, meta, move_current and has_backbone) as out:
            if has_backbone:
                _copy_into(out, backbone_dir, ["backbone"])
    with staged_part(lake, "models", version, f"domains/{domain}") as out:
        write_domain_part(out, domain, result, info)
    _drop_checkpoint(checkpoint)
    return result


# ---------------------------------------------------------------------- CLI


# TrainConfig fields every training command takes as flags (each command adds its own).
TRAIN_FLAGS = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "patience",
    "seed",
    "device",
    "bucket",
    "targets",
    "amp",
    "compile",
    "progress",
    "time_budget_min",
)


def _add_train_flags(
    parser: argparse.ArgumentParser, defaults: TrainConfig, extra: tuple[str, ...] = (), **kw
) -> list[str]:
    """The common flags, then ``TRAIN_FLAGS + extra`` from TrainConfig with ``defaults``' values.

    Returns the TrainConfig fields declared (for :func:`_train_config`)."""
    parser.add_argument(
        "--lake", default=None, help="lake root (default: $VQREC_LAKE or ./var/lake)"
    )
    parser.add_argument(
        "--version", default=None, help="models version to write (default: a UTC timestamp)"
    )
    parser.add_argument(
        "--clean-version", default=None, help="clean version to train on (default: CURRENT)"
    )
    parser.add_argument(
        "--codes-version", default=None, help="codes version to train on (default: CURRENT)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last finished epoch (default: off)"
    )
    parser.add_argument(
        "--model-config",
        default="{}",
        help='JSON object of ModelConfig overrides, e.g. {"hidden": 64} (default: {})',
    )
    parser.add_argument(
        "--run-id",
        default=None,
        help="MLflow pipeline run to log under (default: the models version, as `vqrec "
        "register` names it)",
    )
    parser.add_argument(
        "--no-mlflow",
        action="store_true",
        help="log no MLflow run (default: log one to $MLFLOW_TRACKING_URI, else the lake's store)",
    )
    return add_config_flags(parser, TrainConfig, defaults, only=TRAIN_FLAGS + extra, **kw)


def _train_config(args: argparse.Namespace, names: list[str], **fixed) -> TrainConfig:
    return TrainConfig(**config_kwargs(args, names), **fixed)


INPUT_VERSION_FLAGS = ("clean_version", "codes_version", "backbone_version", "embeddings_version")


def _check_input_versions(args: argparse.Namespace) -> None:
    """Every input version flag the command has is a valid name (a ValueError otherwise),
    checked before the MLflow run opens, so a bad flag writes nothing, not even a store."""
    for flag in INPUT_VERSION_FLAGS:
        value = getattr(args, flag, None)
        if value is not None:
            validate_name(value, "version")


def _model_config(args: argparse.Namespace, **fixed) -> ModelConfig:
    """``--model-config`` (a JSON object of ModelConfig fields); bad keys: a ValueError."""
    from vqrec.core.model import ModelConfig

    try:
        values = json.loads(args.model_config)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--model-config is not JSON: {exc}") from None
    return config_from_dict(ModelConfig, values, "--model-config", **fixed)


@contextlib.contextmanager
def _logged_run(
    args: argparse.Namespace,
    lake: Path,
    version: str,
    stage: str,
    cfg: TrainConfig,
    domain: str | None = None,
) -> Iterator[Any]:
    """The MLflow run of a training command, as the DAG logs it: the child run ``stage``
    (``pretrain``, ``finetune-<d>``) of the pipeline run ``--run-id`` (default the models
    version), the TrainConfig as params; yields :mod:`vqrec.mlops.tracking` (None with
    ``--no-mlflow`` or on a torchrun rank other than 0) for the caller to log the committed
    model with. The store is checked before any training (a bad one: a ValueError, one line).

    A parent the command made itself (no ``--run-id``) is ended with the stage, so no run
    stays RUNNING after the command; a given ``--run-id`` belongs to whoever runs the pipeline.
    """
    if args.no_mlflow or os.environ.get("RANK", "0") != "0":
        yield None
        return
    from vqrec.mlops import tracking

    run_key = args.run_id or version
    status = "FAILED"
    with tracking.stage_run(lake, run_key, stage, domain=domain):
        try:
            tracking.log_params({"train": cfg})
            yield tracking
            status = "FINISHED"
        finally:
            if not args.run_id:
                tracking.end_pipeline_run(lake, run_key, status)


# Bad input (names, versions, configs, a refused checkpoint, an unwritable MLflow store):
# one line on stderr, exit 2.
CLI_ERRORS = (ValueError, LakeError, FileNotFoundError)


def _cli_error(command: str, err: Exception) -> int:
    print(f"vqrec {command}: error: {err}", file=sys.stderr)
    return 2


def main_pretrain(argv: list[str] | None = None) -> int:
    """`vqrec pretrain`: pre-train the backbone on several domains -> models/<V>/backbone/."""
    parser = argparse.ArgumentParser(prog="vqrec pretrain", description=main_pretrain.__doc__)
    names = _add_train_flags(
        parser,
        TrainConfig(),
        ("rho", "valid_rows", "probe_domain", "probe_every", "probe_epochs"),
    )
    parser.add_argument(
        "--domains", required=True, help="comma-separated pre-training domains (required)"
    )
    parser.add_argument(
        "--embeddings-version",
        default=None,
        help="embeddings version of the probe domain (--probe-domain) (default: CURRENT)",
    )
    args = parser.parse_args(argv)
    try:
        lake = lake_root(args.lake)
        domains = [validate_name(d.strip(), "domain") for d in args.domains.split(",") if d.strip()]
        version = validate_name(args.version or default_version(), "version")
        cfg = _train_config(args, names, mode="pretrain")
        model_cfg = _model_config(args)
        _check_input_versions(args)
        with _logged_run(args, lake, version, "pretrain", cfg) as tracking:
            result = pretrain_to_lake(
                lake,
                version,
                domains,
                cfg,
                model_cfg,
                args.clean_version,
                args.codes_version,
                args.resume,
                args.embeddings_version,
            )
            if tracking is not None and result is not None:
                backbone = resolve_version(lake, "models", version) / "backbone"
                tracking.log_model_dir(backbone, lake=lake)
    except CLI_ERRORS as err:
        return _cli_error("pretrain", err)
    if result is None:  # a DDP rank other than 0
        return 0
    print(
        json.dumps(
            {"version": version, "valid": result.metrics["valid"], "test": result.metrics["test"]}
        )
    )
    return 0


def main_finetune(argv: list[str] | None = None) -> int:
    """`vqrec finetune`: transfer the backbone to a domain -> models/<V>/domains/<d>/."""
    parser = argparse.ArgumentParser(prog="vqrec finetune", description=main_finetune.__doc__)
    names = _add_train_flags(
        parser,
        finetune_config(),  # FINETUNE_DEFAULTS over TrainConfig's
        ("mode", "permutation", "permutation_epochs", "negatives", "valid_rows"),
        overrides={
            "mode": {"choices": [m for m in MODES if m != "pretrain"]},
            "lr": {
                "default": None,
                "help": "Adam learning rate (default: by --mode, "
                + ", ".join(f"{m} {lr:g}" for m, lr in FINETUNE_LR.items())
                + ")",
            },
        },
    )
    parser.add_argument("--domain", required=True, help="the domain to fine-tune (required)")
    parser.add_argument(
        "--backbone-version",
        default=None,
        help="models version whose backbone is transferred (default: CURRENT)",
    )
    parser.add_argument(
        "--item-encoder",
        default="vq",
        choices=["vq", "id", "text"],
        help="vq: item codes (VQ-Rec); id: an embedding per item (SASRec); text: the "
        "sentence embedding through a linear adaptor (default: vq)",
    )
    parser.add_argument(
        "--embeddings-version",
        default=None,
        help="embeddings version (text encoder, matched alignment) (default: CURRENT)",
    )
    args = parser.parse_args(argv)
    try:
        lake = lake_root(args.lake)
        domain = validate_name(args.domain, "domain")
        version = validate_name(args.version or default_version(), "version")
        if args.lr is None:  # the mode's lr: one rule with finetune_config and the pipeline
            args.lr = finetune_defaults(args.mode)["lr"]
        cfg = _train_config(args, names)
        model_cfg = _model_config(args, item_encoder=args.item_encoder)
        _check_input_versions(args)
        with _logged_run(args, lake, version, f"finetune-{domain}", cfg, domain) as tracking:
            result = finetune_to_lake(
                lake,
                version,
                domain,
                cfg,
                model_cfg,
                backbone_version=args.backbone_version,
                clean_version=args.clean_version,
                codes_version=args.codes_version,
                embeddings_version=args.embeddings_version,
                resume=args.resume,
            )
            if tracking is not None:
                part = resolve_part(lake, "models", version, f"domains/{domain}")
                tracking.log_model_dir(part, lake=lake)
    except CLI_ERRORS as err:
        return _cli_error("finetune", err)
    from vqrec.core.metrics import format_metrics

    print(f"{domain} test: {format_metrics(result.metrics['test'])}", file=sys.stderr)
    print(json.dumps({"version": version, "domain": domain, "test": result.metrics["test"]}))
    return 0
