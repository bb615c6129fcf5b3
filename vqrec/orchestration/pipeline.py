"""The pipeline's runs as plain functions: what the Airflow tasks call.

DAG files stay thin wiring (dags/); every step here is importable and tested on its own.
A run is described by a :class:`RunPlan`, made once per DAG run by :func:`plan_run` and
passed between tasks as a JSON-able dict (XCom). Every stage of a run writes the lake
version named by the plan, so re-running the same logical date replaces that date's
versions with identical data instead of piling up new ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from vqrec.core.code_strategy import DEFAULT_STRATEGY, check_strategy
from vqrec.lake.store import (
    find_part,
    lake_root,
    read_success,
    resolve_part,
    resolve_version,
    validate_name,
)

log = logging.getLogger(__name__)

# The two cadences of vqrec_nightly. "incremental" (the default): codes by the champion's
# frozen quantizers, no pre-training, each domain's lookup table warm-started from its
# champion for a bounded number of epochs. "refresh": refit the quantizers, pre-train the
# backbone, re-tune every domain. An incremental run with no champion backbone, or a rerun
# of the date whose refresh made the champion, does the refresh.
CADENCES = ("incremental", "refresh")
# Caps of an incremental fine-tune: at most these (hyper.finetune's value when smaller);
# hyper.incremental may change them or set any other TrainConfig field for incremental runs.
# A warm start continues a trained table: small steps (the day-2 study ran at lr 3e-3).
INCREMENTAL_CAPS: dict[str, Any] = {"epochs": 10, "patience": 3, "lr": 3e-3}

# The drift report of an incremental run recommends a refresh when, for any target domain,
# the share of its items its frozen quantizer never saw, or its share of items with a code
# of their own falls below, or its test NDCG@10 has fallen from the refresh's by more than
# the relative drop given. hyper.refresh_when overrides these.
REFRESH_WHEN: dict[str, float] = {
    "unseen_at_fit_share": 0.2,
    "unique_code_share_below": 0.9,
    "ndcg_drop": 0.1,
}

# A raw root may hold dated snapshots: <raw_root>/dt=YYYY-MM-DD/<Domain>/...
_SNAPSHOT = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")


@dataclass
class RunPlan:
    """Everything a pipeline run needs to know, fixed when the run starts."""

    lake: str
    raw_root: str
    version: str
    domains: list[str]
    pretrain_domains: list[str]
    target_domains: list[str]
    code_strategy: str = DEFAULT_STRATEGY
    logical_date: str | None = None
    run_id: str = ""
    hyper: dict[str, Any] = field(default_factory=dict)
    layout: str = "auto"
    # New-domain runs: the champion's models and codes versions they build on (no retrain).
    backbone_version: str | None = None
    frozen_codes_version: str | None = None
    # A one-domain backfill commits its versions without moving CURRENT: CURRENT stays the
    # latest complete picture (the nightly's), which plain CLI commands read.
    move_current: bool = True
    # "refresh" or "incremental" (CADENCES; "backfill" for a new domain) and why; incremental
    # runs warm-start each domain from its champion's models version (domain -> version).
    cadence: str = "refresh"
    cadence_reason: str = ""
    warm_start: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunPlan:
        return cls(**data)


def resolve_raw_snapshot(raw_root: str | Path, logical_date: str | None) -> Path:
    """The raw folder a run reads: the latest ``dt=`` snapshot not after its date.

    Without dated snapshots the raw root itself is the data (the demo set, a static export).
    """
    root = Path(raw_root)
    if not root.is_dir():
        raise FileNotFoundError(f"raw root {root} does not exist")
    snapshots = sorted(
        (m.group(1), p) for p in root.iterdir() if p.is_dir() and (m := _SNAPSHOT.match(p.name))
    )
    if not snapshots:
        return root
    if logical_date is None:
        return snapshots[-1][1]
    day = logical_date[:10]
    eligible = [p for d, p in snapshots if d <= day]
    if not eligible:
        raise FileNotFoundError(f"no raw snapshot under {root} on or before {day}")
    return eligible[-1]


def list_domains(raw: Path) -> list[str]:
    """Domain folders of a raw snapshot (a domain is a folder; its name is the domain id)."""
    return sorted(p.name for p in raw.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def version_for(logical_date: str | None, run_id: str) -> str:
    """One lake version per logical date (so reruns replace it), else per run id."""
    if logical_date:
        return "d" + datetime.fromisoformat(logical_date).strftime("%Y%m%dT%H%M%S")
    return validate_name(re.sub(r"[^A-Za-z0-9._-]", "_", run_id).strip("._-")[:120], "version")


def plan_run(params: dict[str, Any], logical_date: str | None = None, run_id: str = "") -> RunPlan:
    """Validate a DAG run's params and fix the run's version and inputs."""
    raw = resolve_raw_snapshot(params["raw_root"], logical_date)
    available = list_domains(raw)
    domains = [validate_name(d, "domain") for d in (params.get("domains") or available)]
    missing = sorted(set(domains) - set(available))
    if missing:
        raise ValueError(f"domains {missing} not found under {raw} (have {available})")
    pretrain = [validate_name(d, "domain") for d in params.get("pretrain_domains") or []]
    targets = [validate_name(d, "domain") for d in params.get("target_domains") or []]
    if not pretrain:
        raise ValueError("pretrain_domains must name at least one domain")
    outside = sorted((set(pretrain) | set(targets)) - set(domains))
    if outside:
        raise ValueError(f"pretrain/target domains {outside} are not among the cleaned {domains}")
    strategy = check_strategy(params.get("code_strategy", DEFAULT_STRATEGY))
    plan = RunPlan(
        lake=str(lake_root(params.get("lake"))),
        raw_root=str(raw),
        version=version_for(logical_date, run_id),
        domains=domains,
        pretrain_domains=pretrain,
        target_domains=targets or pretrain,
        code_strategy=strategy,
        logical_date=logical_date,
        run_id=run_id,
        hyper=dict(params.get("hyper") or {}),
    )
    return _choose_cadence(plan, params.get("cadence", "incremental"))


def _choose_cadence(plan: RunPlan, asked: str) -> RunPlan:
    """Fix the run's cadence (see :data:`CADENCES`) and, when incremental, what it builds on."""
    if asked not in CADENCES:
        raise ValueError(f"cadence must be one of {', '.join(CADENCES)}; got {asked!r}")
    champion = _champion_backbone_or_none(plan.lake) if asked == "incremental" else None
    if asked == "refresh":
        plan.cadence, plan.cadence_reason = "refresh", "asked for"
    elif champion is None:
        plan.cadence, plan.cadence_reason = "refresh", "no champion backbone yet"
    elif champion["models"] == plan.version:
        plan.cadence, plan.cadence_reason = "refresh", "a rerun of the date that refreshed"
    else:
        plan.cadence = "incremental"
        plan.cadence_reason = f"on the champion backbone of models/{champion['models']}"
        plan.backbone_version = champion["models"]
        plan.frozen_codes_version = champion["codes"]
        plan.warm_start = _warm_starts(plan, champion["models"])
    log.info("cadence %s: %s", plan.cadence, plan.cadence_reason)
    return plan


def _warm_starts(plan: RunPlan, backbone_models: str) -> dict[str, str]:
    """domain -> the models version of its champion, for the target domains whose champion
    was trained on ``backbone_models`` (others start from the backbone, as in a refresh).

    A rerun of an incremental date finds its own first try as champion: it starts from
    what that try started from, so the rerun repeats the date instead of compounding it.
    """
    from mlflow.tracking import MlflowClient

    from vqrec.mlops import registry

    client = MlflowClient()
    starts: dict[str, str] = {}
    for domain in plan.target_domains:
        mv = registry.champion_or_none(client, registry.domain_model_name(domain))
        version = (mv.tags or {}).get(registry.TAG_MODEL_VERSION) if mv is not None else None
        config = _domain_config(plan.lake, version, domain) if version else None
        if config is not None and version == plan.version:
            version = config.get("warm_start_version")
            config = _domain_config(plan.lake, version, domain) if version else None
        if config is not None and config.get("backbone_version") == backbone_models:
            starts[domain] = str(version)
    return starts


def _domain_config(lake: str, version: str, domain: str) -> dict[str, Any] | None:
    """config.json of ``models/<version>/domains/<domain>``, or None if the lake lost it."""
    # A damaged part raises (find_part): its files are not what was committed, which is
    # never "no warm start".
    folder = find_part(lake, "models", version, f"domains/{domain}")
    if folder is None or not (folder / "config.json").exists():
        log.warning("models/%s/domains/%s is not in the lake: no warm start", version, domain)
        return None
    return json.loads((folder / "config.json").read_text())


# ---------------------------------------------------------------------------------------------
# Stages of a run. Each takes the plan (a dict, as it travels through XCom) and returns a
# small JSON-able summary. Spark stages (clean, encode) run through spark-submit in the DAG.


def _plan(plan: RunPlan | dict[str, Any]) -> RunPlan:
    return plan if isinstance(plan, RunPlan) else RunPlan.from_dict(plan)


def _hyper(plan: RunPlan, section: str) -> dict[str, Any]:
    value = plan.hyper.get(section) or {}
    if not isinstance(value, dict):
        raise ValueError(f"hyper.{section} must be an object, not {value!r}")
    return dict(value)


def _data_versions(plan: RunPlan) -> dict[str, str]:
    return {stage: plan.version for stage in ("clean", "embeddings", "codes", "models")}


def _stage_run(
    plan: RunPlan,
    stage: str,
    domain: str | None = None,
    span: tuple[float, float] | None = None,
):
    """The MLflow child run of one stage, under the run's parent: the parent is named after
    the run (``nightly d20261120T000000 (incremental)``) and carries the plan as params."""
    from vqrec.mlops import tracking

    kind = "new domain" if plan.cadence == "backfill" else "nightly"
    tracking.start_pipeline_run(
        plan.lake,
        plan.run_id or plan.version,
        logical_date=plan.logical_date,
        data_versions=_data_versions(plan),
        run_name=f"{kind} {plan.version} ({plan.cadence})",
        params={
            "version": plan.version,
            "cadence": plan.cadence,
            "cadence_reason": plan.cadence_reason,
            "domains": ",".join(plan.domains),
            "pretrain_domains": ",".join(plan.pretrain_domains),
            "target_domains": ",".join(plan.target_domains),
            "code_strategy": plan.code_strategy,
            "backbone_version": plan.backbone_version or plan.version,
        },
    )
    return tracking.stage_run(
        plan.lake,
        plan.run_id or plan.version,
        stage,
        domain=domain,
        data_versions=_data_versions(plan),
        span=span,
    )


def _span(meta: dict[str, Any]) -> tuple[float, float]:
    """A committed version's (started_at, committed_at), from its ``_SUCCESS``."""
    return float(meta["started_at"]), float(meta["committed_at"])


def log_data_stages(plan: RunPlan) -> None:
    """Child runs ``clean`` and ``encode`` of the run (their Spark jobs log nothing to
    MLflow): per-domain row counts and the quality reports; items encoded and reused."""
    from vqrec.mlops import tracking

    if tracking.stage_runs(plan.lake, plan.run_id or plan.version, "clean"):
        return  # a retried codes task: logged already
    clean = resolve_version(plan.lake, "clean", plan.version)
    meta = read_success(clean)
    with _stage_run(plan, "clean", span=_span(meta)):
        for domain, counts in meta.get("domains", {}).items():
            tracking.log_quality_report(clean, domain)
            tracking.log_metrics({f"{domain}.{k}": v for k, v in counts.items()})
    embeddings = resolve_version(plan.lake, "embeddings", plan.version)
    meta = read_success(embeddings)
    with _stage_run(plan, "encode", span=_span(meta)):
        keys = ("items", "unique_texts", "encoded", "reused", "encode_seconds")
        tracking.log_metrics({k: meta[k] for k in keys if k in meta})
        tracking.log_params({"encoder": meta.get("encoder")})


def clean_assets(plan: RunPlan | dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(URI ``vqrec://clean/<domain>``, extra) of each cleaned domain of the run.

    The extra carries the lake version (and the domain's users/items/kept counts), so a
    consumer DAG reads exactly it. Airflow publishes them
    (:func:`vqrec.orchestration.airflow_support.publish_clean_assets`); this module stays
    free of Airflow imports.
    """
    p = _plan(plan)
    clean = resolve_version(p.lake, "clean", p.version)
    reports = read_success(clean).get("reports", {})
    events = []
    for domain in p.domains:
        extra: dict[str, Any] = {"lake": p.lake, "version": p.version, "domain": domain}
        summary = reports.get(domain) or {}
        extra.update({k: summary[k] for k in ("users", "items", "kept") if k in summary})
        events.append((f"vqrec://clean/{domain}", extra))
    return events


def _code_stage(
    p: RunPlan, pretrain: list[str], targets: list[str], frozen_from: str | None = None
) -> dict[str, Any]:
    """The codes stage of a run (one MLflow stage run): fit what is missing, code everything."""
    from vqrec.mlops import tracking
    from vqrec.stages.codes import CodesConfig, run_codes
    from vqrec.stages.flags import config_from_dict

    config = config_from_dict(
        CodesConfig,
        _hyper(p, "codes"),
        "hyper.codes",
        pretrain_domains=tuple(pretrain),
        target_domains=tuple(targets),
        strategy=p.code_strategy,
        lake=p.lake,
        version=p.version,
        embeddings_version=p.version,
        clean_version=p.version,
        frozen_from=frozen_from,
        move_current=p.move_current,
    )
    log_data_stages(p)
    with _stage_run(p, "codes"):
        result = run_codes(config)
        tracking.log_params(config, prefix="codes.")
        tracking.log_codes(resolve_version(p.lake, "codes", p.version))
    return {"version": p.version, "quantizer_of_domain": result["quantizer_of_domain"]}


def code_domains(plan: RunPlan | dict[str, Any]) -> dict[str, Any]:
    """Fit the pre-training quantizer (strict, joint) and code every domain of the run."""
    p = _plan(plan)
    targets = sorted(set(p.target_domains) - set(p.pretrain_domains))
    # Incremental: every quantizer the champion's codes version holds is reused as is (new
    # items are coded, nothing refitted); only a new target domain's own one is fitted.
    frozen = p.frozen_codes_version if p.cadence == "incremental" else None
    return _code_stage(p, p.pretrain_domains, targets, frozen_from=frozen)


def _train_configs(
    plan: RunPlan, section: str, defaults: dict[str, Any] | None = None, **fixed: Any
):
    """(TrainConfig, ModelConfig) for one training stage: ``defaults`` < the plan's
    ``hyper[section]`` < ``fixed``. A key that names no field: a ValueError naming it."""
    from vqrec.core.model import ModelConfig
    from vqrec.core.trainer import TrainConfig
    from vqrec.stages.flags import config_from_dict

    # Only the plan's keys can be unknown: defaults and fixed are this module's own.
    train = {"progress": False, **(defaults or {}), **_hyper(plan, section), **fixed}
    return (
        config_from_dict(TrainConfig, train, f"hyper.{section}"),
        config_from_dict(ModelConfig, _hyper(plan, "model"), "hyper.model"),
    )


def _incremental_config(plan: RunPlan, cfg: Any) -> Any:
    """``cfg`` bounded by :data:`INCREMENTAL_CAPS`, then ``hyper.incremental`` applied."""
    from vqrec.stages.flags import config_from_dict

    caps = {k: min(getattr(cfg, k), v) for k, v in INCREMENTAL_CAPS.items()}
    # A warm start is aligned already (finetune_to_lake would enforce it; said here too,
    # so the logged config is the one trained).
    caps["permutation"] = "identity"
    merged = {**dataclasses.asdict(cfg), **caps, **_hyper(plan, "incremental")}
    return config_from_dict(type(cfg), merged, "hyper.incremental")


def run_pretrain(plan: RunPlan | dict[str, Any]) -> dict[str, Any]:
    """Pre-train the shared backbone on the plan's pre-training domains -> models/<v>/backbone."""
    from vqrec.mlops import tracking
    from vqrec.stages.train import pretrain_to_lake

    p = _plan(plan)
    if p.cadence == "incremental":
        log.info("incremental run: no pre-training, the champion backbone is kept")
        return {"version": p.backbone_version, "skipped": p.cadence_reason}
    cfg, model_cfg = _train_configs(p, "pretrain", mode="pretrain")
    with _stage_run(p, "pretrain"):
        # The model config is logged from config.json once trained (n_items known by then).
        tracking.log_params({"train": cfg})
        pretrain_to_lake(
            p.lake,
            p.version,
            p.pretrain_domains,
            cfg,
            model_cfg,
            clean_version=p.version,
            codes_version=p.version,
            resume=True,
            embeddings_version=p.version,  # hyper.pretrain.probe_domain's texts (matched)
        )
        out = resolve_version(p.lake, "models", p.version) / "backbone"
        tracking.log_model_dir(out)
    return {"version": p.version, "path": str(out)}


def run_finetune(plan: RunPlan | dict[str, Any], domain: str) -> dict[str, Any]:
    """Transfer the run's backbone to one domain -> models/<v>/domains/<domain> (own part)."""
    from vqrec.core.train_config import finetune_defaults
    from vqrec.mlops import tracking
    from vqrec.stages.train import finetune_to_lake

    p = _plan(plan)
    domain = validate_name(domain, "domain")
    warm = p.warm_start.get(domain) if p.cadence == "incremental" else None
    defaults = finetune_defaults(_hyper(p, "finetune").get("mode", "transfer"))
    cfg, model_cfg = _train_configs(p, "finetune", defaults=defaults)
    if warm:
        cfg = _incremental_config(p, cfg)
    with _stage_run(p, f"finetune-{domain}", domain):
        # The model config is logged from config.json once trained (n_items known by then).
        tracking.log_params({"train": cfg})
        finetune_to_lake(
            p.lake,
            p.version,
            domain,
            cfg,
            model_cfg,
            backbone_version=p.backbone_version or p.version,
            clean_version=p.version,
            codes_version=p.version,
            embeddings_version=p.version,  # the matched alignment reads the item texts
            resume=True,
            move_current=p.move_current,
            warm_start_version=warm,
        )
        out = resolve_part(p.lake, "models", p.version, f"domains/{domain}")
        test = tracking.log_model_dir(out)
    return {"domain": domain, "version": p.version, "path": str(out), "test": test}


def collect_results(plan: RunPlan | dict[str, Any], results: list[dict[str, Any] | None]) -> dict:
    """Per-domain test metrics of the run; domains whose fine-tune failed are listed apart."""
    p = _plan(plan)
    done = {r["domain"]: r for r in results if r}
    failed = sorted(set(p.target_domains) - set(done))
    summary = {
        "version": p.version,
        "domains": {d: done[d]["test"] for d in sorted(done)},
        "failed": failed,
    }
    for domain, test in summary["domains"].items():
        log.info("%s test: %s", domain, json.dumps(test, sort_keys=True))
    if failed:
        log.warning("fine-tune failed for %s: registering the others", failed)
    if not done:
        raise RuntimeError(f"no domain finished fine-tuning (failed: {failed})")
    if p.cadence == "incremental":
        summary["drift"] = drift_report(p)
    return summary


def drift_report(plan: RunPlan | dict[str, Any]) -> dict[str, Any]:
    """Should the backbone be refreshed? Per target domain of an incremental run: the
    figures of :data:`REFRESH_WHEN` (from the run's codes stats and the models' test
    metrics, the refresh's being those of the backbone's own models version) and the
    limits crossed; ``refresh_recommended`` when any is."""
    p = _plan(plan)
    limits = {**REFRESH_WHEN, **_hyper(p, "refresh_when")}
    unknown = sorted(set(limits) - set(REFRESH_WHEN))
    if unknown:
        known = ", ".join(REFRESH_WHEN)
        raise ValueError(f"hyper.refresh_when: unknown key(s) {unknown}; known: {known}")
    codes = json.loads((resolve_version(p.lake, "codes", p.version) / "stats.json").read_text())
    report: dict[str, Any] = {"limits": limits, "domains": {}}
    for domain in p.target_domains:
        stats = codes["domains"].get(domain, {})
        now = _test_ndcg(p.lake, p.version, domain)
        then = _test_ndcg(p.lake, str(p.backbone_version), domain)
        figures = {
            "unseen_at_fit_share": stats.get("unseen_at_fit_share"),
            "unique_code_share": stats.get("unique_code_share"),
            "ndcg_drop": None if now is None or not then else round((then - now) / then, 4),
        }
        crossed = [
            k for k in ("unseen_at_fit_share", "ndcg_drop") if (figures[k] or 0.0) > limits[k]
        ]
        share = figures["unique_code_share"]
        if share is not None and share < limits["unique_code_share_below"]:
            crossed.append("unique_code_share_below")
        report["domains"][domain] = figures | {"crossed": crossed}
    report["refresh_recommended"] = any(d["crossed"] for d in report["domains"].values())
    if report["refresh_recommended"]:
        log.warning("drift: a backbone refresh is recommended: %s", json.dumps(report["domains"]))
    return report


def _test_ndcg(lake: str, version: str, domain: str) -> float | None:
    """Test NDCG@10 of ``models/<version>/domains/<domain>``, None if it has none."""
    # A damaged model raises (find_part): it is not a model without figures, which would
    # change promotions.
    folder = find_part(lake, "models", version, f"domains/{domain}")
    if folder is None or not (folder / "metrics.json").exists():
        return None
    return float(json.loads((folder / "metrics.json").read_text())["test"]["ndcg@10"])


def register_run(
    plan: RunPlan | dict[str, Any], summary: dict[str, Any], backbone: bool | None = None
) -> dict[str, Any]:
    """Register the backbone and each finished domain; promote the not-worse ones.

    ``backbone`` None: registered when the run pre-trained one (a refresh).
    """
    from vqrec.mlops import registry, tracking

    p = _plan(plan)
    if backbone is None:
        backbone = p.cadence == "refresh"
    tolerance = float(p.hyper.get("promotion_tolerance", 0.0))
    key = p.run_id or p.version
    versions = {"clean_version": p.version, "codes_version": p.version}
    registered = registry.register_models(
        p.lake,
        p.version,
        sorted(summary["domains"]),
        key,
        backbone,
        tolerance=tolerance,
        backbone_versions=versions,
        domain_versions={**versions, "embeddings_version": p.version},
    )
    out: dict[str, Any] = {"domains": {}}
    for domain, result in registered:
        if domain is None:
            out["backbone"] = result
        else:
            out["domains"][domain] = result
    tracking.summarize_pipeline_run(p.lake, key, *_night_summary(summary, out))
    tracking.end_pipeline_run(p.lake, key, status="FAILED" if summary.get("failed") else "FINISHED")
    return out


def _night_summary(
    summary: dict[str, Any], registered: dict[str, Any]
) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, tags) of the parent run: each domain's test figures, each registration's
    decision, the failed domains and the drift verdict."""
    # The fine-tunes' test figures come keyed as logged: "test_ndcg@10", ...
    metrics = {
        f"{domain}.{name}": value
        for domain, test in summary["domains"].items()
        for name, value in test.items()
    }
    tags = {"vqrec.failed_domains": ",".join(summary.get("failed", [])) or "none"}
    results = dict(registered["domains"])
    if "backbone" in registered:
        results["backbone"] = registered["backbone"]
    for name, result in results.items():
        decision = result.get("promotion") or {}
        verdict = "promoted" if decision.get("promoted") else "champion kept"
        tags[f"vqrec.promotion.{name}"] = f"v{result.get('version')} {verdict}"
    if "drift" in summary:
        tags["vqrec.refresh_recommended"] = str(summary["drift"]["refresh_recommended"]).lower()
    return metrics, tags


# ---------------------------------------------------------------------------------------------
# The new-domain backfill: one domain on the champion backbone, no backbone retrain.


def landing_event_params(events: Any) -> dict[str, Any]:
    """Params carried by the newest ``vqrec://raw/landed`` asset event, if the run has one.

    A producer announces a landed domain with ``extra={"domain": ..., "raw_path": ...}``
    (optionally ``layout``); a manual run has no events and keeps its form's params.
    """
    if not events:
        return {}
    newest: dict[str, Any] = {}
    for _asset, asset_events in dict(events).items():
        for event in asset_events:
            extra = dict(getattr(event, "extra", None) or {})
            if extra.get("domain") and extra.get("raw_path"):
                newest = {k: extra[k] for k in ("domain", "raw_path", "layout") if k in extra}
    return newest


def champion_backbone(lake: str) -> dict[str, str]:
    """The lake versions (models, codes) behind ``vqrec-backbone@champion``."""
    champion = _champion_backbone_or_none(lake)
    if champion is None:
        from vqrec.mlops import registry

        raise RuntimeError(
            f"no {registry.BACKBONE_MODEL}@{registry.CHAMPION} in the MLflow store of {lake}: "
            "run vqrec_nightly first (a new domain is fine-tuned on the champion backbone)"
        )
    return champion


def _champion_backbone_or_none(lake: str) -> dict[str, str] | None:
    from mlflow.tracking import MlflowClient

    from vqrec.mlops import registry, tracking

    tracking.setup_tracking(lake)
    # Only "no such model / alias" means no champion (registry.champion_or_none); any other
    # store error propagates instead of being reported as a missing champion.
    mv = registry.champion_or_none(MlflowClient(), registry.BACKBONE_MODEL)
    if mv is None:
        return None
    tags = mv.tags or {}
    models = tags.get(registry.TAG_MODEL_VERSION)
    codes = tags.get("vqrec.data.codes")
    if not models or not codes:
        raise RuntimeError(f"{registry.BACKBONE_MODEL} v{mv.version} lacks its lake version tags")
    return {"models": models, "codes": codes, "registered_version": str(mv.version)}


def plan_new_domain(
    params: dict[str, Any], logical_date: str | None = None, run_id: str = ""
) -> RunPlan:
    """Validate a new-domain request and pin the champion backbone it builds on."""
    domain = validate_name(str(params.get("domain") or ""), "domain")
    raw = Path(str(params.get("raw_path") or ""))
    if not raw.is_dir():
        raise FileNotFoundError(f"raw_path {str(raw)!r} is not a folder")
    if raw.name != domain:
        raise ValueError(
            f"raw_path {raw} must be the domain's own folder, named {domain!r} "
            "(a domain is a folder; its name is the domain id)"
        )
    layout = params.get("layout", "auto")
    if layout not in {"auto", "amazon", "generic"}:
        raise ValueError(f"layout must be auto, amazon or generic, not {layout!r}")
    strategy = check_strategy(params.get("code_strategy", DEFAULT_STRATEGY))
    lake = str(lake_root(params.get("lake")))
    champion = champion_backbone(lake)
    version = validate_name(f"{domain}-{version_for(logical_date, run_id)}"[:128], "version")
    return RunPlan(
        lake=lake,
        raw_root=str(raw.resolve()),
        version=version,
        domains=[domain],
        pretrain_domains=[],
        target_domains=[domain],
        code_strategy=strategy,
        logical_date=logical_date,
        run_id=run_id,
        hyper=dict(params.get("hyper") or {}),
        layout=layout,
        backbone_version=champion["models"],
        frozen_codes_version=champion["codes"],
        move_current=False,
        cadence="backfill",
        cadence_reason="a new domain on the champion backbone",
    )


def code_new_domain(plan: RunPlan | dict[str, Any]) -> dict[str, Any]:
    """Code the new domain with the champion's frozen quantizer (shared) or its own (domain)."""
    p = _plan(plan)
    return _code_stage(p, [], p.target_domains, frozen_from=p.frozen_codes_version)
