"""The model registry: per-domain pyfunc recommenders, the backbone, champion/challenger.

Registered models:

* ``vqrec-<domain>``: backbone + that domain's lookup table + item codes + id maps + the
  domain's frozen quantizer, as an ``mlflow.pyfunc`` model (:class:`VQRecRecommender`).
  ``predict`` takes a DataFrame with ``history`` (raw item ids, oldest first), ``k`` and
  optionally ``new_items`` (JSON list of ``{"item_id", "text"}``: items unseen in training,
  encoded with the sentence encoder, coded with the frozen quantizer and embedded through
  the code table on the fly) and ``exclude_seen``; it returns ``item_ids``/``scores`` (top-k),
  ``unknown_items`` (history ids it could not use) and ``strategy`` (``model``, or
  ``popularity`` when no history item is known: a cold user still gets an answer).
* ``vqrec-backbone``: the pre-trained Transformer + its code table + the pre-training
  quantizer, the same class without a catalogue: every item comes in ``new_items`` (a
  zero-shot recommender over any catalogue of texts).

Every new version gets the alias ``challenger``; :func:`promote` moves ``champion`` to it
only if its test NDCG@10 is not worse than the champion's (minus a tolerance), and records
the decision with both figures on the version (tags) and on its run. Downstream code loads
``models:/vqrec-<domain>@champion``.

Artifacts are safetensors / Parquet / faiss / JSON, and the model class is logged "from
code" (``vqrec/mlops/pyfunc_entry.py``; :mod:`vqrec.mlops.pyfunc` and the parts of
:mod:`vqrec.core` it needs are shipped by ``code_paths``): nothing of ours is pickled.

What a version's page shows: the LoggedModel it was made from carries the test figures
(linked to the clean version they were measured on) and the lake versions, code strategy and
backbone as params; the version itself carries them as tags (``vqrec.metric.*``,
``vqrec.code_strategy``, ``vqrec.backbone_version``), which the promotion gate reads.

mlflow and pandas are imported inside the functions (``vqrec register --help`` stays fast).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqrec.lake.store import (
    LakeError,
    find_version,
    read_success,
    resolve_version,
    validate_name,
)
from vqrec.mlops import tracking

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

BACKBONE_MODEL = "vqrec-backbone"
CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_METRIC = "test_ndcg@10"

# Version tags (keys must pass MLflow's validation: no "@").
TAG_MODEL_VERSION = "vqrec.model_version"  # the lake version of models/<V>
TAG_CONTENT = "vqrec.content_sha1"  # sha1 of the weights: same data => same registry version
TAG_DECISION = "vqrec.promotion.decision"  # promoted | kept_champion | already_champion
TAG_CODE_STRATEGY = "vqrec.code_strategy"  # domain (own quantizer) | shared (pre-training's)
TAG_BACKBONE = "vqrec.backbone_version"  # the models version whose backbone it transferred

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # vqrec/
# What a registered model needs to load and predict (paths under vqrec/): the pyfunc class,
# the model, the quantizer and the sentence encoder. The lake, MLflow tracking, Airflow glue
# and dev tools stay out of the model's code_paths.
SERVING_CODE = (
    "__init__.py",
    "core/__init__.py",
    "core/model.py",
    "core/item_encoders.py",
    "core/quantizer.py",
    "core/encoder.py",
    "mlops/__init__.py",
    "mlops/pyfunc.py",
    "mlops/pyfunc_entry.py",
)


def serving_code(folder: Path) -> Path:
    """Copy :data:`SERVING_CODE` into ``folder/vqrec`` (the tree given as ``code_paths``)."""
    root = folder / "vqrec"
    for name in SERVING_CODE:
        source = PACKAGE_DIR / name
        if source.exists():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    return root


def domain_model_name(domain: str) -> str:
    """The registered model name of a domain: ``vqrec-<domain>``."""
    return f"vqrec-{validate_name(domain, 'domain')}"


# ---------------------------------------------------------------------------------------------
# building a bundle from the lake


@dataclass
class Bundle:
    """The files of one registrable model, staged in a temp folder, plus what they describe."""

    artifacts: dict[str, str]
    info: dict[str, Any]
    input_example: pd.DataFrame


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _encoder_info(lake: str | os.PathLike[str] | None, embeddings_version: str | None) -> dict:
    """encoder_key / encoder_model / text_dim from an embeddings version's _SUCCESS ({} when
    there is no such version; a damaged one raises DamagedVersion, never a bundle without
    its encoder)."""
    folder = find_version(lake, "embeddings", embeddings_version)
    if folder is None:
        return {}
    meta = read_success(folder)
    return {
        "encoder_key": meta.get("encoder"),
        "encoder_model": (meta.get("config") or {}).get("model") or meta.get("model"),
        "text_dim": meta.get("dimension"),
        "embeddings_version": meta.get("version"),
    }


def build_domain_bundle(
    lake: str | os.PathLike[str] | None,
    domain: str,
    out_dir: str | os.PathLike[str],
    model_version: str | None = None,
    clean_version: str | None = None,
    codes_version: str | None = None,
    embeddings_version: str | None = None,
) -> Bundle:
    """Stage the files of ``vqrec-<domain>`` from committed lake versions into ``out_dir``.

    Versions default to what the trainer recorded in the model's config/metrics, else CURRENT.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    domain = validate_name(domain, "domain")
    models_dir = resolve_version(lake, "models", model_version)
    model_dir = models_dir / "domains" / domain
    if not (model_dir / "model.safetensors").exists():
        raise LakeError(f"{model_dir} holds no model.safetensors: was {domain!r} fine-tuned?")
    from vqrec.lake.models import data_versions  # imports torch: only when a bundle is built

    recorded = data_versions(model_dir)
    clean_dir = resolve_version(lake, "clean", clean_version or recorded.get("clean"))
    codes_dir = resolve_version(lake, "codes", codes_version or recorded.get("codes"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # Id map + popularity (share of the domain's interactions) for cold users.
    items = pq.read_table(clean_dir / "items" / f"domain={domain}", columns=["item_idx", "item_id"])
    inter = pq.read_table(clean_dir / "interactions" / f"domain={domain}", columns=["item_idx"])
    counts = pc.value_counts(inter.column("item_idx")).flatten()
    pop = dict(zip(counts[0].to_pylist(), counts[1].to_pylist(), strict=True))
    item_idx = items.column("item_idx").to_pylist()
    table = pa.table(
        {
            "item_idx": pa.array(item_idx, pa.int32()),
            "item_id": items.column("item_id").cast(pa.string()),
            "popularity": pa.array([int(pop.get(i, 0)) for i in item_idx], pa.int64()),
        }
    ).sort_by("item_idx")
    pq.write_table(table, out / "items.parquet")

    codes_config = json.loads((codes_dir / "config.json").read_text())
    quantizer = (codes_config.get("quantizer_of_domain") or {}).get(domain)
    if quantizer is None:
        raise LakeError(f"{codes_dir}: no quantizer recorded for domain {domain!r}")
    shutil.copy2(codes_dir / "quantizers" / f"{quantizer}.faiss", out / "quantizer.faiss")
    shutil.copy2(model_dir / "model.safetensors", out / "model.safetensors")
    emb_version = (
        embeddings_version or recorded.get("embeddings") or codes_config.get("embeddings_version")
    )
    trained = json.loads((model_dir / "config.json").read_text())
    info = {
        "kind": "domain",
        "catalogue": True,
        "domain": domain,
        "model_version": models_dir.name,
        "clean_version": clean_dir.name,
        "codes_version": codes_dir.name,
        "quantizer": quantizer,
        # The domain's own quantizer, or the pre-training one (vqrec.core.code_strategy).
        "code_strategy": "domain" if quantizer == domain else "shared",
        # None: trained from scratch (no backbone transferred).
        "backbone_version": trained.get("backbone_version"),
        "content_sha1": _sha1(out / "model.safetensors"),
        **_encoder_info(lake, emb_version),
    }
    (out / "bundle.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    popular = table.sort_by([("popularity", "descending")]).column("item_id").to_pylist()
    example = pd.DataFrame({"history": [popular[:3][::-1]], "k": [5]})
    artifacts = {
        "model": str(out / "model.safetensors"),
        "items": str(out / "items.parquet"),
        "quantizer": str(out / "quantizer.faiss"),
        "bundle": str(out / "bundle.json"),
    }
    return Bundle(artifacts, info, example)


def build_backbone_bundle(
    lake: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    model_version: str | None = None,
    codes_version: str | None = None,
    embeddings_version: str | None = None,
    clean_version: str | None = None,
) -> Bundle:
    """Stage ``vqrec-backbone``: pre-trained model (Transformer + code table) + its quantizer.

    ``clean_version`` is only recorded (the backbone serves no catalogue of its own).
    """
    import pandas as pd

    models_dir = resolve_version(lake, "models", model_version)
    model_dir = models_dir / "backbone"
    if not (model_dir / "model.safetensors").exists():
        raise LakeError(f"{model_dir} holds no model.safetensors: was the backbone pre-trained?")
    from vqrec.lake.models import data_versions  # imports torch: only when a bundle is built

    recorded = data_versions(model_dir)
    codes_dir = resolve_version(lake, "codes", codes_version or recorded.get("codes"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model_dir / "model.safetensors", out / "model.safetensors")
    shutil.copy2(codes_dir / "quantizers" / "pretrain.faiss", out / "quantizer.faiss")
    codes_config = json.loads((codes_dir / "config.json").read_text())
    emb_version = (
        embeddings_version or recorded.get("embeddings") or codes_config.get("embeddings_version")
    )
    info = {
        "kind": "backbone",
        "catalogue": False,
        "model_version": models_dir.name,
        **({"clean_version": clean_version} if clean_version else {}),
        "codes_version": codes_dir.name,
        "quantizer": "pretrain",
        "backbone_version": models_dir.name,
        "content_sha1": _sha1(out / "model.safetensors"),
        **_encoder_info(lake, emb_version),
    }
    (out / "bundle.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    example = pd.DataFrame(
        {
            "history": [["a"]],
            "k": [1],
            "new_items": [[{"item_id": "a", "text": "a red pen"}]],
        }
    )
    artifacts = {
        "model": str(out / "model.safetensors"),
        "quantizer": str(out / "quantizer.faiss"),
        "bundle": str(out / "bundle.json"),
    }
    return Bundle(artifacts, info, example)


# ---------------------------------------------------------------------------------------------
# registering and promoting


def _version_metric(client: MlflowClient, version: Any, metric: str) -> float | None:
    """A version's figure: its ``vqrec.metric.<key>`` tag, else its run's metric."""
    key = tracking.mlflow_key(metric)
    tag = version.tags.get(f"vqrec.metric.{key}")
    if tag not in (None, ""):
        return float(tag)
    if version.run_id:
        value = client.get_run(version.run_id).data.metrics.get(key)
        if value is not None:
            return float(value)
    return None


# What the store answers when there is no champion yet (no model, or no such alias). Any
# other error (a server down, a timeout) must stop the gate, not look like "no champion":
# that would promote a challenger without comparing it.
_NO_CHAMPION_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


def champion_or_none(client: MlflowClient, name: str) -> Any | None:
    """``name``@champion, or None when the model or the alias does not exist; any other
    store error (unreachable server, bad credentials) propagates."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in _NO_CHAMPION_CODES:
            return None
        raise


def promote(
    client: MlflowClient,
    name: str,
    version: str | int,
    metric: str = DEFAULT_METRIC,
    tolerance: float = 0.0,
) -> dict[str, Any]:
    """Move ``champion`` to ``version`` iff its ``metric`` >= the champion's - ``tolerance``.

    No champion yet: promote. A challenger without the figure is never promoted over an
    existing champion. The decision and both figures are written as tags on the version and
    as params/metrics of its run. Returns the decision as a dict.
    """
    version = str(version)
    mv = client.get_model_version(name, version)
    challenger_value = _version_metric(client, mv, metric)
    champ = champion_or_none(client, name)
    champion_value = _version_metric(client, champ, metric) if champ else None
    decision: dict[str, Any] = {
        "name": name,
        "version": version,
        "metric": metric,
        "tolerance": float(tolerance),
        "challenger_value": challenger_value,
        "champion_version": str(champ.version) if champ else None,
        "champion_value": champion_value,
    }
    if champ is not None and str(champ.version) == version:
        promoted, reason = True, "already_champion"
    elif champ is None:
        promoted, reason = True, "promoted"
        decision["why"] = "no champion yet"
    elif challenger_value is None:
        promoted, reason = False, "kept_champion"
        decision["why"] = f"challenger has no {metric}"
    elif champion_value is None or challenger_value >= champion_value - tolerance:
        promoted, reason = True, "promoted"
        decision["why"] = (
            f"champion has no {metric}"
            if champion_value is None
            else f"{challenger_value:.6f} >= {champion_value:.6f} - {tolerance}"
        )
    else:
        promoted, reason = False, "kept_champion"
        decision["why"] = f"{challenger_value:.6f} < {champion_value:.6f} - {tolerance}"
    decision.update(promoted=promoted, decision=reason)
    if promoted and reason != "already_champion":
        client.set_registered_model_alias(name, CHAMPION, version)
    _record_decision(client, mv, decision)
    log.info("promotion %s v%s: %s (%s)", name, version, reason, decision.get("why", ""))
    return decision


def _record_decision(client: MlflowClient, mv: Any, decision: dict[str, Any]) -> None:
    key = tracking.mlflow_key(decision["metric"])
    tags = {
        TAG_DECISION: decision["decision"],
        "vqrec.promotion.metric": decision["metric"],
        "vqrec.promotion.tolerance": str(decision["tolerance"]),
        "vqrec.promotion.challenger_value": str(decision["challenger_value"]),
        "vqrec.promotion.champion_version": str(decision["champion_version"]),
        "vqrec.promotion.champion_value": str(decision["champion_value"]),
        "vqrec.promotion.why": decision.get("why", ""),
    }
    for tag, value in tags.items():
        client.set_model_version_tag(mv.name, mv.version, tag, value)
    if not mv.run_id:
        return
    run = client.get_run(mv.run_id)
    for tag, value in tags.items():
        client.set_tag(mv.run_id, tag, value)
    params = {
        "promotion.decision": decision["decision"],
        "promotion.tolerance": str(decision["tolerance"]),
        "promotion.champion_version": str(decision["champion_version"]),
    }
    for param, value in params.items():
        if param not in run.data.params:  # params are immutable: first decision wins
            client.log_param(mv.run_id, param, value)
    for which in ("challenger", "champion"):
        value = decision[f"{which}_value"]
        if value is not None:
            client.log_metric(mv.run_id, f"promotion.{which}_{key}", float(value))


def _find_registered(client: MlflowClient, name: str, info: dict[str, Any]) -> Any | None:
    """An existing version registered from the same lake model version and the same weights."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    for mv in sorted(versions, key=lambda v: int(v.version)):
        if (
            mv.tags.get(TAG_MODEL_VERSION) == info["model_version"]
            and mv.tags.get(TAG_CONTENT) == info["content_sha1"]
        ):
            return mv
    return None


def _recorded_decision(mv: Any) -> dict[str, Any]:
    tags = mv.tags
    return {
        "name": mv.name,
        "version": str(mv.version),
        "metric": tags.get("vqrec.promotion.metric"),
        "decision": tags.get(TAG_DECISION),
        "promoted": tags.get(TAG_DECISION) in {"promoted", "already_champion"},
        "challenger_value": tags.get("vqrec.promotion.challenger_value"),
        "champion_version": tags.get("vqrec.promotion.champion_version"),
        "champion_value": tags.get("vqrec.promotion.champion_value"),
        "why": tags.get("vqrec.promotion.why"),
    }


def register_bundle(
    lake: str | os.PathLike[str] | None,
    name: str,
    bundle: Bundle,
    model_dir: str | os.PathLike[str],
    pipeline_run_id: str | None = None,
    metric: str = DEFAULT_METRIC,
    tolerance: float = 0.0,
    experiment: str = tracking.DEFAULT_EXPERIMENT,
) -> dict[str, Any]:
    """Log ``bundle`` as a pyfunc, register it as ``name``@challenger, then :func:`promote`.

    Idempotent: a version already registered from the same lake model version with the same
    weights is reused (no new version, no second promotion). The logging run is a stage run
    ``register-<name>`` under the pipeline run (params, epoch metrics, curves, quality report).
    Returns ``{"name", "version", "reused", "promotion": {...}}``.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    tracking.setup_tracking(lake, experiment)
    client = MlflowClient()
    info = bundle.info
    existing = _find_registered(client, name, info)
    if existing is not None:
        if existing.tags.get(TAG_DECISION):
            decision = _recorded_decision(existing)
        else:  # registered, but the gate never ran (a killed task): adopt it, run it now
            _announce(client, name, str(existing.version), info)
            decision = promote(client, name, existing.version, metric, tolerance)
        version = str(existing.version)
        return {"name": name, "version": version, "reused": True, "promotion": decision}

    run_key = pipeline_run_id or info["model_version"]
    data_versions = {
        k.removesuffix("_version"): info[k]
        for k in ("clean_version", "codes_version", "embeddings_version", "model_version")
        if info.get(k)
    }
    with tracking.stage_run(
        lake,
        run_key,
        f"register-{name}",
        domain=info.get("domain"),
        data_versions=data_versions,
        experiment=experiment,
    ):
        tests = tracking.log_model_dir(model_dir, lake=lake)
        tracking.log_params({"bundle": info})
        if info.get("domain") and info.get("clean_version"):
            clean_dir = find_version(lake, "clean", info["clean_version"])
            if clean_dir is None:
                log.warning(
                    "no quality report logged: clean/%s is not in the lake", info["clean_version"]
                )
            else:
                tracking.log_quality_report(clean_dir, info["domain"])
        model_info = _log_pyfunc(name, bundle)
        # The test figures on the LoggedModel too (the version's page shows its model's
        # metrics), linked to the clean version they were measured on.
        clean = tracking.training_datasets(model_dir, lake).get("clean")
        tracking.log_model_metrics(model_info.model_id, tests, clean)
        tags = _version_tags(info, run_key, data_versions, tests)
        # With its tags in one call: a kill can never leave a version without the tags that
        # let the rerun find it again.
        version = str(mlflow.register_model(model_info.model_uri, name, tags=tags).version)
        _announce(client, name, version, info)
        decision = promote(client, name, version, metric, tolerance)
        mlflow.set_tag("vqrec.registered_version", version)
    return {"name": name, "version": version, "reused": False, "promotion": decision}


def _announce(client: MlflowClient, name: str, version: str, info: dict[str, Any]) -> None:
    """A registered version becomes ``challenger``; the model's description is refreshed."""
    client.set_registered_model_alias(name, CHALLENGER, version)
    client.update_registered_model(name, description=_model_description(name, info))


def _version_tags(
    info: dict[str, Any], run_key: str, data_versions: dict[str, str], tests: dict[str, float]
) -> dict[str, str]:
    """A registered version's tags: where it comes from (lake versions, weights' sha1, run),
    what it is (code strategy, backbone) and its test figures (the promotion gate's)."""
    tags = {
        TAG_MODEL_VERSION: info["model_version"],
        TAG_CONTENT: info["content_sha1"],
        tracking.TAG_PIPELINE_RUN: run_key,
        TAG_BACKBONE: info.get("backbone_version") or "none (trained from scratch)",
        **{f"vqrec.data.{k}": v for k, v in data_versions.items()},
        **{f"vqrec.metric.{tracking.mlflow_key(k)}": str(v) for k, v in tests.items()},
    }
    if info.get("code_strategy"):  # a domain's; the backbone's quantizer is "pretrain"
        tags[TAG_CODE_STRATEGY] = info["code_strategy"]
    commit = tracking.git_commit()
    if commit:
        tags[tracking.TAG_GIT_COMMIT] = commit
    return tags


# What a LoggedModel's page lists as its params (from the bundle's info).
MODEL_PARAMS = (
    "kind",
    "domain",
    "model_version",
    "backbone_version",
    "code_strategy",
    "quantizer",
    "clean_version",
    "codes_version",
    "embeddings_version",
    "encoder_model",
)


def _log_pyfunc(name: str, bundle: Bundle) -> Any:
    """Log ``bundle`` as a pyfunc on the active run (a LoggedModel whose params say what it
    is); returns MLflow's ModelInfo. Only :data:`SERVING_CODE` travels in ``code_paths``."""
    import mlflow

    from vqrec.mlops.pyfunc import signature

    params = {k: str(bundle.info[k]) for k in MODEL_PARAMS if bundle.info.get(k) is not None}
    with tempfile.TemporaryDirectory() as code_dir:
        code = serving_code(Path(code_dir))
        model_info = mlflow.pyfunc.log_model(
            name=name,
            # Models from code: MLflow runs pyfunc_entry.py at load time, nothing is pickled.
            python_model=str(code / "mlops" / "pyfunc_entry.py"),
            artifacts=bundle.artifacts,
            code_paths=[str(code)],
            signature=signature(),
            input_example=bundle.input_example,
            # Given, not inferred: inference would import and profile the model (slow).
            pip_requirements=_requirements(),
            params=params,
        )
    return model_info


def _model_description(name: str, info: dict[str, Any]) -> str:
    if info.get("kind") == "backbone":
        return (
            "VQ-Rec backbone: pre-trained Transformer + code table + pre-training OPQ "
            "quantizer. predict(history of ids, k, new_items=[{item_id, text}]) ranks the "
            "given new items (zero-shot)."
        )
    return (
        f"VQ-Rec recommender for domain {info.get('domain')!r}: backbone + lookup table + "
        "item codes + id maps + frozen quantizer. predict(history=[item_id...], k, "
        "new_items=[{item_id, text}] optional) -> item_ids, scores. Load "
        f"models:/{name}@champion."
    )


def _requirements() -> list[str]:
    from importlib.metadata import version

    pins = []
    for dist in (
        "torch",
        "faiss-cpu",
        "safetensors",
        "pandas",
        "pyarrow",
        "numpy",
        "sentence-transformers",
        "mlflow",
    ):
        try:
            pins.append(f"{dist}=={version(dist)}")
        except Exception:  # not installed here: leave it unpinned
            pins.append(dist)
    return pins


def register_domain(
    lake: str | os.PathLike[str] | None,
    domain: str,
    model_version: str | None = None,
    pipeline_run_id: str | None = None,
    metric: str = DEFAULT_METRIC,
    tolerance: float = 0.0,
    experiment: str = tracking.DEFAULT_EXPERIMENT,
    **versions: str | None,
) -> dict[str, Any]:
    """Register ``vqrec-<domain>`` from ``<lake>/models/<V>/domains/<domain>/`` and promote.

    ``versions`` may name clean_version / codes_version / embeddings_version explicitly.
    """
    models_dir = resolve_version(lake, "models", model_version)
    with tempfile.TemporaryDirectory(prefix="vqrec-bundle-") as tmp:
        bundle = build_domain_bundle(lake, domain, tmp, models_dir.name, **versions)
        return register_bundle(
            lake,
            domain_model_name(domain),
            bundle,
            models_dir / "domains" / domain,
            pipeline_run_id,
            metric,
            tolerance,
            experiment,
        )


def register_backbone(
    lake: str | os.PathLike[str] | None,
    model_version: str | None = None,
    pipeline_run_id: str | None = None,
    metric: str = DEFAULT_METRIC,
    tolerance: float = 0.0,
    experiment: str = tracking.DEFAULT_EXPERIMENT,
    **versions: str | None,
) -> dict[str, Any]:
    """Register ``vqrec-backbone`` from ``<lake>/models/<V>/backbone/`` and promote."""
    models_dir = resolve_version(lake, "models", model_version)
    with tempfile.TemporaryDirectory(prefix="vqrec-bundle-") as tmp:
        bundle = build_backbone_bundle(lake, tmp, models_dir.name, **versions)
        return register_bundle(
            lake,
            BACKBONE_MODEL,
            bundle,
            models_dir / "backbone",
            pipeline_run_id,
            metric,
            tolerance,
            experiment,
        )


def register_all(
    lake: str | os.PathLike[str] | None,
    model_version: str | None = None,
    domains: Sequence[str] | None = None,
    pipeline_run_id: str | None = None,
    metric: str = DEFAULT_METRIC,
    tolerance: float = 0.0,
    backbone: bool = True,
    experiment: str = tracking.DEFAULT_EXPERIMENT,
) -> list[dict[str, Any]]:
    """Register the backbone (if trained in this version) and every (or the given) domain.

    The DAG's register/promote task: one call, idempotent, one result dict per model.
    """
    models_dir = resolve_version(lake, "models", model_version)
    if domains is None:
        folder = models_dir / "domains"
        # Hidden folders are parts still being written, or left by a killed fine-tune.
        found = folder.iterdir() if folder.is_dir() else []
        domains = sorted(p.name for p in found if p.is_dir() and not p.name.startswith("."))
    # Every name checked before anything is registered: a bad one must not leave half a run.
    domains = [validate_name(d, "domain") for d in domains]
    backbone = backbone and (models_dir / "backbone" / "model.safetensors").exists()
    registered = register_models(
        lake, models_dir.name, domains, pipeline_run_id, backbone, metric, tolerance, experiment
    )
    return [result for _, result in registered]


def register_models(
    lake: str | os.PathLike[str] | None,
    model_version: str | None,
    domains: Sequence[str],
    pipeline_run_id: str | None,
    backbone: bool,
    metric: str = DEFAULT_METRIC,
    tolerance: float = 0.0,
    experiment: str = tracking.DEFAULT_EXPERIMENT,
    backbone_versions: dict[str, str | None] | None = None,
    domain_versions: dict[str, str | None] | None = None,
) -> list[tuple[str | None, dict[str, Any]]]:
    """Register the backbone (when ``backbone``), then each domain in the order given.

    The one loop behind :func:`register_all` (the CLI's) and ``pipeline.register_run`` (the
    DAGs'): ``(None, result)`` for the backbone, ``(domain, result)`` for each domain, so each
    caller shapes its own answer. ``*_versions`` name the data versions explicitly (else they
    are read from the model's own records).
    """
    results: list[tuple[str | None, dict[str, Any]]] = []
    if backbone:
        result = register_backbone(
            lake,
            model_version,
            pipeline_run_id,
            metric,
            tolerance,
            experiment,
            **(backbone_versions or {}),
        )
        results.append((None, result))
    for domain in domains:
        result = register_domain(
            lake,
            domain,
            model_version,
            pipeline_run_id,
            metric,
            tolerance,
            experiment,
            **(domain_versions or {}),
        )
        results.append((domain, result))
    return results


class NoChampionError(LookupError):
    """There is no champion to load: no such model, no version, or no ``champion`` alias."""


def champion_version(client: MlflowClient, name: str) -> Any:
    """The model version ``name@champion`` points at, or :class:`NoChampionError` saying why.

    A downstream loader gets this one clear error, not MLflow's traceback, when the model was
    never registered, has no versions, or lost its alias (deleting the champion's version
    deletes the alias too). The store URI is never quoted: it may hold a password.
    """
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise NoChampionError(
            f"no registered model {name!r} in the MLflow registry: register one first "
            "(vqrec register, or the DAG's register task)"
        ) from None
    version = (model.aliases or {}).get(CHAMPION)
    if version is None:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        why = (
            "it has no versions"
            if not versions
            else f"no version carries the alias (versions {versions}; was the champion deleted?)"
        )
        raise NoChampionError(
            f"{name} has no {CHAMPION}: {why}; re-run register, or set the alias on a version "
            "known to be good"
        )
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise NoChampionError(
            f"{name}@{CHAMPION} points at version {version}, which no longer exists"
        ) from None


def load_champion(domain: str, lake: str | os.PathLike[str] | None = None):
    """The pyfunc model ``vqrec-<domain>@champion`` from the lake's store (or $MLFLOW_TRACKING_URI).

    Raises :class:`NoChampionError` when there is none. The alias is resolved once and that
    version is loaded, so a promotion in between cannot mix two versions.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    tracking.setup_tracking(lake)
    name = domain_model_name(domain)
    mv = champion_version(MlflowClient(), name)
    return mlflow.pyfunc.load_model(f"models:/{name}/{mv.version}")


# ---------------------------------------------------------------------------------------------
# CLI: vqrec register


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vqrec register",
        description="Register the backbone and per-domain models of a models version in "
        "MLflow and promote each challenger that is not worse than its champion.",
    )
    p.add_argument("--lake", default=None, help="lake root (default: $VQREC_LAKE or ./var/lake)")
    p.add_argument("--version", default=None, help="models version (default: CURRENT)")
    p.add_argument("--domains", default="", help="comma-separated domains (default: all)")
    p.add_argument(
        "--no-backbone", action="store_true", help="skip vqrec-backbone (default: register it)"
    )
    p.add_argument(
        "--run-id",
        default=None,
        help="pipeline run id, the parent MLflow run (default: the models version, the run "
        "`vqrec pretrain/finetune` logged under)",
    )
    p.add_argument(
        "--metric",
        default=DEFAULT_METRIC,
        help="test figure the promotion gate compares (default: %(default)s)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="promote when challenger >= champion - tolerance (default: %(default)s)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``vqrec register``: register + promote the models of a models version; print JSON."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    domains = [d for d in args.domains.split(",") if d] or None
    try:
        results = register_all(
            args.lake,
            args.version,
            domains,
            args.run_id,
            args.metric,
            args.tolerance,
            backbone=not args.no_backbone,
        )
    except (ValueError, LakeError) as err:  # a bad name or version: one line, no traceback
        print(f"vqrec register: error: {err}", file=sys.stderr)
        return 2
    json.dump(results, sys.stdout, indent=2, default=str)
    print()
    return 0
