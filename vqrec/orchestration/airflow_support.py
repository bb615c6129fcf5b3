"""Defaults and small helpers shared by the DAG files (dags/ stays thin wiring).

Kept apart from vqrec.orchestration.pipeline so the library and CLI never import Airflow:
this is the one module of the package that does (tests/test_architecture.py checks it).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from vqrec.core.code_strategy import DEFAULT_STRATEGY, check_strategy
from vqrec.spark import driver_memory

REPO = Path(__file__).resolve().parents[2]
JOBS_DIR = REPO / "jobs"

# GPU stages go to this pool (capacity = GPUs per worker) and this queue (a Celery worker
# started with `airflow celery worker --queues gpu` on a GPU machine). The local executor
# ignores queues, so the same DAG runs on CPU by default.
GPU_POOL = os.environ.get("VQREC_GPU_POOL", "gpu")
GPU_QUEUE = os.environ.get("VQREC_GPU_QUEUE", "gpu")

# Retries with backoff for every task of the DAGs (a training retry resumes from its
# last checkpointed epoch).
RETRY_ARGS: dict[str, Any] = {
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}

# The nightly's cron; "none" makes it manual-only (the local stack's default: runs come
# from `infra/stack.sh trigger` or the REST API, never from unpausing the DAG).
_cron = os.environ.get("VQREC_NIGHTLY_CRON", "0 2 * * *")
NIGHTLY_SCHEDULE: str | None = None if _cron.strip().lower() in {"", "none"} else _cron

# The asset alias under which the clean stage announces each cleaned domain.
CLEAN_ALIAS = "vqrec-clean"
# The asset a raw-data producer updates when a new domain lands (see docs/ORCHESTRATION.md).
RAW_LANDING_URI = os.environ.get("VQREC_RAW_LANDING_ASSET", "vqrec://raw/landed")


def _default_hyper() -> dict[str, Any]:
    raw = os.environ.get("VQREC_HYPER")
    return json.loads(raw) if raw else {}


def _list_env(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    return [x for x in raw.split(",") if x] if raw is not None else default


DEFAULT_PARAMS: dict[str, Any] = {
    "raw_root": os.environ.get("VQREC_RAW_ROOT", str(REPO / "var" / "demo" / "raw")),
    "lake": os.environ.get("VQREC_LAKE", str(REPO / "var" / "lake")),
    "domains": _list_env("VQREC_DOMAINS", []),
    "pretrain_domains": _list_env("VQREC_PRETRAIN_DOMAINS", []),
    "target_domains": _list_env("VQREC_TARGET_DOMAINS", []),
    "code_strategy": check_strategy(os.environ.get("VQREC_CODE_STRATEGY", DEFAULT_STRATEGY)),
    "hyper": _default_hyper(),
}


def plan_xcom(key: str, join: bool = False, task_id: str = "plan") -> str:
    """A Jinja template reading one field of the run plan (for templated operator args)."""
    expr = f"ti.xcom_pull(task_ids='{task_id}')['{key}']"
    return "{{ " + expr + (" | join(',')" if join else "") + " }}"


def spark_env() -> dict[str, str]:
    """Environment for spark-submit: this venv's Python on the driver and the workers."""
    python = os.environ.get("PYSPARK_PYTHON", sys.executable)
    return {
        "PYSPARK_PYTHON": python,
        "PYSPARK_DRIVER_PYTHON": python,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PATH": os.pathsep.join([str(Path(python).parent), os.environ.get("PATH", "")]),
    }


def spark_job(task_id: str, script: str, args: list[str], doc_md: str):
    """A spark-submit task for one of the jobs/ entry points, on connection spark_default."""
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    return SparkSubmitOperator(
        task_id=task_id,
        doc_md=doc_md,
        application=str(JOBS_DIR / script),
        conn_id="spark_default",
        application_args=args,
        env_vars=spark_env(),
        name=f"vqrec-{task_id}",
        driver_memory=driver_memory(),
    )


def encode_job(doc_md: str):
    """The encode stage of a run: the run's clean version -> the run's embeddings version."""
    args = ["--lake", plan_xcom("lake"), "--version", plan_xcom("version")]
    args += ["--clean-version", plan_xcom("version")]
    return spark_job("encode", "encode.py", args, doc_md)


def recommend_job(doc_md: str):
    """Batch recommendations of a run: its target domains' champions over its clean version,
    ``k`` from the DAG param ``recommend_k``."""
    args = ["--lake", plan_xcom("lake"), "--version", plan_xcom("version")]
    args += ["--clean-version", plan_xcom("version")]
    args += ["--domains", plan_xcom("target_domains", join=True), "--k", "{{ params.recommend_k }}"]
    return spark_job("recommend", "recommend.py", args, doc_md)


def publish_clean_assets(plan: dict[str, Any], outlet_events: Any = None) -> list[str]:
    """Announce each cleaned domain as an asset event (URIs ``vqrec://clean/<domain>``).

    ``outlet_events`` is Airflow's accessor; without it (tests) the URIs are only returned.
    The events and their extras come from :func:`vqrec.orchestration.pipeline.clean_assets`.
    """
    from vqrec.orchestration import pipeline

    events = pipeline.clean_assets(plan)
    if outlet_events is not None:
        from airflow.sdk import Asset, AssetAlias

        for uri, extra in events:
            outlet_events[AssetAlias(CLEAN_ALIAS)].add(Asset(uri), extra=extra)
    return [uri for uri, _ in events]
