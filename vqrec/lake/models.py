"""The model-folder contract: what ``models/<version>/`` holds and how it is read back.

``backbone/``: ``model.safetensors`` (the full pre-trained model: backbone + pre-trained
code table), ``config.json``, ``metrics.json``. ``domains/<d>/``: ``model.safetensors``
(everything needed to score), ``lookup_table.safetensors`` (the domain's code-embedding
table + input LayerNorm alone: the small artifact a new domain adds on a shared backbone,
kept for downstream consumers; nothing in this project reads it back), ``config.json``,
``metrics.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from vqrec.core.model import VQRec, load_model, save_lookup_table, save_model
from vqrec.core.trainer import TrainResult

DATA_STAGES = ("clean", "codes", "embeddings")


def data_versions(model_dir: str | os.PathLike[str]) -> dict[str, str]:
    """The clean/codes/embeddings versions a model folder was trained on.

    The one reader of what the trainer records in ``config.json`` under ``"data"``: a
    domain's source (``{"clean": v, "codes": v, ...}``), or for ``backbone/`` one source per
    pre-training domain, all loaded from the same versions (the first is taken). A stage the
    model did not read (e.g. embeddings for a VQ model) is absent.
    """
    config = json.loads((Path(model_dir) / "config.json").read_text())
    data = config["data"]
    if Path(model_dir).name == "backbone":
        data = next(iter(data.values()))
    return {stage: data[stage] for stage in DATA_STAGES if data.get(stage)}


def _write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")


def write_backbone(out: Path, result: TrainResult, info: dict[str, Any]) -> None:
    """backbone/: the full pre-trained model (backbone + pre-trained code table)."""
    folder = out / "backbone"
    folder.mkdir(parents=True, exist_ok=True)
    save_model(result.model, folder / "model.safetensors")
    _write_json(folder / "config.json", result.config | info)
    _write_json(folder / "metrics.json", result.metrics)


def write_domain(out: Path, domain: str, result: TrainResult, info: dict[str, Any]) -> None:
    """domains/<d>/: lookup table alone, the full scoring model, config and metrics."""
    folder = out / "domains" / domain
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    save_lookup_table(result.model, folder / "lookup_table.safetensors")
    save_model(result.model, folder / "model.safetensors")
    _write_json(folder / "config.json", result.config | info)
    _write_json(folder / "metrics.json", result.metrics)


def write_domain_part(folder: Path, domain: str, result: TrainResult, info: dict) -> None:
    """write_domain() into an already-staged part folder (files land directly in it)."""
    staging = folder / ".staging"
    write_domain(staging, domain, result, info)
    for f in (staging / "domains" / domain).iterdir():
        shutil.move(str(f), folder / f.name)
    shutil.rmtree(staging)


def load_domain_model(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[VQRec, dict[str, Any]]:
    """A fine-tuned domain model (ready to score, eval mode) and its config + metrics."""
    path = Path(path)
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"{path}: no model.safetensors (not a domain model folder)")
    model = load_model(path / "model.safetensors", map_location=str(device)).eval()
    info = json.loads((path / "config.json").read_text())
    metrics_path = path / "metrics.json"
    if metrics_path.exists():
        info["metrics"] = json.loads(metrics_path.read_text())
    return model, info
