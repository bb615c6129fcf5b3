"""The Airflow DAGs: they import, have the expected shape, and run end to end for real.

The end-to-end tests run `airflow dags test` (a real Airflow 3, SQLite metadata DB in a temp
AIRFLOW_HOME, spark-submit against local[2], the real encoder, faiss, torch and a real MLflow
store in the lake) on the project's demo data.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DATE = "2026-11-20"
# Small but real: the DAG's own defaults, with demo-sized epochs and a smaller model.
HYPER = {
    "pretrain": {"epochs": 4, "batch_size": 512, "patience": 3},
    "finetune": {"epochs": 10, "batch_size": 512, "patience": 4, "permutation_epochs": 2},
    "model": {"hidden": 128, "inner": 128},
}


def _airflow_env(home: Path, lake: Path, raw: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW_CONN_SPARK_DEFAULT=json.dumps({"conn_type": "spark", "host": "local[2]"}),
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        VQREC_LAKE=str(lake),
        VQREC_RAW_ROOT=str(raw),
        VQREC_DOMAINS="Arts,Garden,Kitchen",
        VQREC_PRETRAIN_DOMAINS="Arts,Garden",
        VQREC_TARGET_DOMAINS="Arts,Garden,Kitchen",
        VQREC_HYPER=json.dumps(HYPER),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _run(cmd: list[str], env: dict[str, str], log: Path, timeout: int = 1200) -> None:
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-60:])
        pytest.fail(f"{' '.join(cmd[:4])} failed (rc {proc.returncode}); log {log}:\n{tail}")


def test_dagbag_imports_and_shapes():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"), include_examples=False)
    assert bag.import_errors == {}
    nightly = bag.get_dag("vqrec_nightly")
    assert {t.task_id for t in nightly.tasks} == {
        "plan",
        "clean",
        "encode",
        "publish_clean_assets",
        "codes",
        "pretrain",
        "targets",
        "finetune",
        "evaluate",
        "register",
    }
    up = {t.task_id: set(t.upstream_task_ids) for t in nightly.tasks}
    assert up["clean"] == {"plan"} and up["encode"] == {"clean"}
    assert "encode" in up["codes"] and "codes" in up["pretrain"]
    assert {"pretrain", "targets"} <= up["finetune"] and "finetune" in up["evaluate"]
    assert "evaluate" in up["register"]
    for tid in ("codes", "pretrain", "finetune"):
        task = nightly.get_task(tid)
        assert task.pool == "gpu" and task.queue == "gpu", tid
    assert nightly.get_task("evaluate").trigger_rule == "all_done"
    assert nightly.doc_md and nightly.catchup is False
    assert nightly.get_task("finetune").retries >= 1

    new = bag.get_dag("vqrec_new_domain")
    assert {t.task_id for t in new.tasks} == {
        "plan",
        "clean",
        "encode",
        "codes",
        "finetune",
        "evaluate",
        "register",
    }
    assert {"domain", "raw_path", "layout"} <= set(new.params.keys())
    assert "pretrain" not in {t.task_id for t in new.tasks}  # never retrains the backbone


def _data_hashes(lake: Path, version: str) -> dict[str, str]:
    """sha1 of every data file of a run's clean / embeddings / codes versions."""
    out = {}
    for stage in ("clean", "embeddings", "codes"):
        base = lake / stage / version
        for f in sorted(base.rglob("*")):
            if f.is_file() and f.suffix in {".parquet", ".faiss"}:
                out[str(f.relative_to(lake))] = hashlib.sha1(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def nightly_world(tmp_path_factory):
    """Demo data + one real `airflow dags test vqrec_nightly` run."""
    base = tmp_path_factory.mktemp("airflow")
    home, lake, raw = base / "home", base / "lake", base / "raw"
    env = _airflow_env(home, lake, raw)
    _run([str(VENV_BIN / "vqrec"), "demo", "--out", str(raw), "--seed", "0"], env, base / "d.log")
    _run(["bash", str(ROOT / "infra" / "airflow_init.sh")], env, base / "init.log")
    _run([str(VENV_BIN / "airflow"), "dags", "test", "vqrec_nightly", DATE], env, base / "n1.log")
    return {"base": base, "env": env, "lake": lake, "raw": raw}


def _client(lake: Path):
    from mlflow.tracking import MlflowClient

    from vqrec import tracking

    tracking.setup_tracking(lake)
    return MlflowClient()


@pytest.mark.slow
def test_nightly_end_to_end_registers_champions(nightly_world):
    from vqrec.data import load_domain
    from vqrec.evaluate import popularity_metrics
    from vqrec.pipeline import version_for

    lake = nightly_world["lake"]
    client = _client(lake)
    for name in ("vqrec-backbone", "vqrec-Arts", "vqrec-Garden", "vqrec-Kitchen"):
        mv = client.get_model_version_by_alias(name, "champion")
        assert mv.version == "1", name
    # The transferred models beat popularity on the demo data by a clear margin.
    version = version_for(f"{DATE}T00:00:00+00:00", "")
    for domain in ("Arts", "Garden", "Kitchen"):
        metrics = json.loads(
            (lake / "models" / version / "domains" / domain / "metrics.json").read_text()
        )["test"]
        data = load_domain(lake, domain, version, version)
        pop = popularity_metrics(data.splits["train"], data.splits["test"], data.n_items)
        assert metrics["ndcg@10"] > 1.5 * pop["ndcg@10"] + 0.02, (domain, metrics, pop)


@pytest.mark.slow
def test_same_date_twice_is_idempotent(nightly_world):
    from vqrec.pipeline import version_for

    lake, env, base = nightly_world["lake"], nightly_world["env"], nightly_world["base"]
    version = version_for(f"{DATE}T00:00:00+00:00", "")
    before = _data_hashes(lake, version)
    assert before, "the run wrote no data files"
    _run([str(VENV_BIN / "airflow"), "dags", "test", "vqrec_nightly", DATE], env, base / "n2.log")
    assert _data_hashes(lake, version) == before
    client = _client(lake)
    for name in ("vqrec-backbone", "vqrec-Arts"):
        versions = client.search_model_versions(f"name = '{name}'")
        assert len(versions) == 1, f"{name}: a rerun of the same date registered again"


@pytest.mark.slow
def test_new_domain_registers_without_touching_the_backbone(nightly_world):
    lake, env, base, raw = (nightly_world[k] for k in ("lake", "env", "base", "raw"))
    client = _client(lake)
    backbone_before = client.get_model_version_by_alias("vqrec-backbone", "champion")
    conf = json.dumps({"domain": "Toys", "raw_path": str(raw / "Toys"), "lake": str(lake)})
    _run(
        [str(VENV_BIN / "airflow"), "dags", "test", "vqrec_new_domain", DATE, "-c", conf],
        env,
        base / "new.log",
    )
    client = _client(lake)
    toys = client.get_model_version_by_alias("vqrec-Toys", "champion")
    assert toys.version == "1"
    backbone_after = client.get_model_version_by_alias("vqrec-backbone", "champion")
    assert backbone_after.version == backbone_before.version
    assert len(client.search_model_versions("name = 'vqrec-backbone'")) == 1
