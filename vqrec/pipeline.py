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

from vqrec.lake import lake_root, validate_name

log = logging.getLogger(__name__)

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
    code_strategy: str = "shared"
    logical_date: str | None = None
    run_id: str = ""
    hyper: dict[str, Any] = field(default_factory=dict)

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
    strategy = params.get("code_strategy", "shared")
    if strategy not in {"shared", "domain"}:
        raise ValueError(f"code_strategy must be 'shared' or 'domain', not {strategy!r}")
    return RunPlan(
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


def dump_plan(plan: RunPlan) -> str:
    return json.dumps(plan.to_dict(), sort_keys=True)
